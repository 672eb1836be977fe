"""The node plugin's /metrics: the metrics of every volume's mount on this
node, gathered.

Each mount the node plugin starts serves its metrics (dfs/mountmetrics.py) on
a unix socket of its own under the state folder, named after its volume. A
scrape of the plugin reads each staged volume's socket and passes its samples
on with a `volume_id` label, so that one scrape target per node shows every
volume's FUSE requests, latencies and bytes; `dfs_csi_mount_up` says which
mounts answered. Reading them happens per scrape, in the scraping thread.
"""

import hashlib
import os
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dfs import logs
from dfs.rpc import parse_addr

log = logs.get_logger("csi")

# A mount that does not answer within this is reported down for this scrape.
MOUNT_TIMEOUT = 2.0
MAX_BODY = 16 << 20


def socket_path(folder: str, volume_id: str) -> str:
    """Where the mount of `volume_id` serves its metrics. Named by a hash: a
    unix socket's path is short (108 bytes) and volume ids may be long."""
    return os.path.join(folder, hashlib.sha256(volume_id.encode()).hexdigest()[:16] + ".sock")


def _fetch(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(MOUNT_TIMEOUT)
        sock.connect(path)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: mount\r\n\r\n")
        reply = b""
        while len(reply) <= MAX_BODY and (data := sock.recv(65536)):
            reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    status = head.partition(b"\r\n")[0]
    if not status.startswith(b"HTTP/1.1 200"):
        raise OSError(f"the mount answered {status!r}")
    return body.decode()


def _labelled(sample: str, label: str) -> str:
    """`sample` (a line of the text format) with `label` first among its labels."""
    name_end = len(sample) - len(sample.lstrip("abcdefghijklmnopqrstuvwxyz"
                                               "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:"))
    name, rest = sample[:name_end], sample[name_end:]
    if rest.startswith("{}"):
        rest = rest[2:]
    if rest.startswith("{"):
        return f"{name}{{{label},{rest[1:]}"
    return f"{name}{{{label}}}{rest}"


def gather(folder: str, volume_ids: list[str]) -> str:
    """Every staged volume's mount metrics as one text-format page."""
    described: set[str] = set()
    families: dict[str, list[str]] = {}
    up = []
    for volume_id in volume_ids:
        label = f'volume_id="{volume_id}"'
        try:
            text = _fetch(socket_path(folder, volume_id))
        except OSError as exc:
            log.debug("mount metrics not read", volume=volume_id, error=str(exc))
            up.append(f"dfs_csi_mount_up{{{label}}} 0\n")
            continue
        up.append(f"dfs_csi_mount_up{{{label}}} 1\n")
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                family = line.split(" ", 3)[2]
                lines = families.setdefault(family, [])
                if line not in described:
                    described.add(line)
                    lines.append(line + "\n")
            elif line:
                families.setdefault(family, []).append(_labelled(line, label) + "\n")
    head = ("# HELP dfs_csi_mount_up Whether the mount of a staged volume answered "
            "this scrape.\n# TYPE dfs_csi_mount_up gauge\n")
    return head + "".join(up) + "".join("".join(lines) for lines in families.values())


def serve(addr: str, folder: str, volume_ids: Callable[[], list[str]]) -> None:
    """Serve `gather` at http://ADDR/metrics from a thread of its own."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "metrics are at /metrics")
                return
            body = gather(folder, volume_ids()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    host, port = parse_addr(addr)
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="dfs-csi-metrics", daemon=True).start()
    log.info("serving the mounts' metrics", addr=addr, folder=folder)
