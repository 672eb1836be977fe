"""Fault injection for the fault tests and the soak: killing and stopping
servers of a local cluster, flipping bytes in replicas on disk, tiny disks
(tmpfs with a size limit) and network namespaces joined by a bridge.

Everything here undoes itself: the context managers tear down what they made
even when the test body fails.
"""

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import lmdb
import msgpack
import trio

from chunkserver.chunkfile import CRC_OFFSET, decode_header
from chunkserver.chunkstore import ChunkStore
from dfs.config import ClusterRef
from dfs.ops import CHUNK, META
from dfs.rpc import Client
from metaserver.store import CHANGELOG, DATABASES, LOG_HISTORY, LOG_SEQ, read_u64

REPO = Path(__file__).resolve().parent.parent

MiB = 1024 * 1024


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL if it has not exited within 10 s; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions `text` (a mount point, a data folder)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(entry))
    return pids


def meta_call(ref: ClusterRef, op: str, schema=META, addr: str | None = None, **fields):
    """One RPC from the test process (retrying while a server restarts)."""
    async def run():
        client = Client(addr or ref.meta, ref.secret, schema, retry_for=30.0)
        try:
            return await client.call(op, timeout=60.0, **fields)
        finally:
            await client.aclose()

    return trio.run(run)


def chunk_call(ref: ClusterRef, addr: str, op: str, **fields):
    return meta_call(ref, op, schema=CHUNK, addr=addr, **fields)


def status(ref: ClusterRef) -> dict:
    return meta_call(ref, "status")


def healthy(ref: ClusterRef, servers: int) -> bool:
    """Every server alive, every chunk at R live replicas, no copy running."""
    st = status(ref)
    return (sum(cs["alive"] for cs in st["chunkservers"]) >= servers
            and st["under_replicated"] == 0 and st["replicating"] == 0)


def chunks_of(ref: ClusterRef, path: str, chunk_size: int) -> list[dict]:
    """chunk_read replies for every chunk of a file, given its dfs path."""
    attr = meta_call(ref, "resolve", path=path.encode())
    return [meta_call(ref, "chunk_read", ino=attr["ino"], index=i)
            for i in range(-(-attr["size"] // chunk_size))]


def alive(ref: ClusterRef, addr: str) -> bool:
    return any(cs["alive"] for cs in status(ref)["chunkservers"] if cs["addr"] == addr)


# ---- processes of a LocalCluster ------------------------------------------

def signal_server(local, name: str, sig: int) -> None:
    os.kill(int((local.dir / name / "pid").read_text()), sig)


def kill_server(local, name: str) -> None:
    """SIGKILL a server ('meta' or 'csN') and wait until it is gone."""
    pid = int((local.dir / name / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
             10, f"{name} to die")


def restart_server(local, name: str) -> None:
    layout = local.load()
    if name == "meta":
        local.start_metaserver(layout)
    else:
        local.start_chunkserver(layout, int(name[2:]) - 1)


def start_metalogger(local, folder: Path, *extra: str) -> subprocess.Popen:
    """A dfs-metalogger following `local`'s metaserver, named after `folder`,
    logging to FOLDER.log beside it."""
    env = dict(os.environ, DFS_SECRET_FILE=str(local.dir / "secret"))
    with open(folder.parent / f"{folder.name}.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "metaserver.metalogger", "--meta",
                                 local.load().meta, "--data-dir", str(folder), "--name",
                                 folder.name, *extra],
                                cwd=REPO, env=env, stdout=out, stderr=out,
                                start_new_session=True)


def database_items(database: Path) -> tuple[tuple[int, int], dict]:
    """((history, seq), every replicated table's items) of a metadata
    database folder (all but the metaserver's own records of its commits)."""
    env = lmdb.open(str(database), readonly=True, max_dbs=len(DATABASES))
    try:
        with env.begin() as txn:
            tables = {name: list(txn.cursor(env.open_db(name.encode(), txn=txn)))
                      for name in DATABASES if name != CHANGELOG}
    finally:
        env.close()
    counters = dict(tables["counters"])
    return ((read_u64(counters.get(LOG_HISTORY.encode(), bytes(8))),
             read_u64(counters.get(LOG_SEQ.encode(), bytes(8)))), tables)


def copy_matches(local, folder: Path) -> bool:
    """Whether the metalogger's copy in `folder` equals the metaserver's
    database item by item, at a moment both hold the same commit (False
    until then; AssertionError if they differ there)."""
    ours = database_items(local.dir / "meta" / "data" / "meta.lmdb")
    theirs = database_items(folder / "meta.lmdb")
    if ours[0] != theirs[0]:
        return False
    assert ours[1] == theirs[1], "the metalogger's copy differs at the same commit"
    return True


def addr_of(local, name: str) -> str:
    return local.load().chunkservers[int(name[2:]) - 1]


def name_of(local, addr: str) -> str:
    return f"cs{local.load().chunkservers.index(addr) + 1}"


# ---- replicas on disk -------------------------------------------------------

def replica_paths(data_dir: Path, chunk: int) -> tuple[Path, Path]:
    return ChunkStore(data_dir).paths(chunk)


def replica_version(data_dir: Path, chunk: int) -> int | None:
    """The version in a replica's header on disk, None if there is no replica."""
    _, meta_path = replica_paths(data_dir, chunk)
    try:
        with open(meta_path, "rb") as f:
            return decode_header(f.read(CRC_OFFSET), chunk)
    except FileNotFoundError:
        return None


def flip_bytes(data_dir: Path, chunk: int, offset: int, count: int = 16) -> None:
    """Corrupt a replica's data in place, as a failing disk would (at the end
    of the data if `offset` lies beyond it)."""
    data_path, _ = replica_paths(data_dir, chunk)
    offset = max(0, min(offset, data_path.stat().st_size - count))
    with open(data_path, "r+b") as f:
        f.seek(offset)
        old = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0x5A for b in old))
        f.flush()
        os.fsync(f.fileno())


# ---- tiny disks ---------------------------------------------------------------

@contextmanager
def tiny_disk(path: Path, size: str):
    """A tmpfs of `size` (e.g. '3m') mounted at `path` for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "dfs-tiny", str(path)],
                   check=True)
    try:
        yield path
    finally:
        _umount(path)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---- network namespaces -------------------------------------------------------

SUBNET = "10.231.19"


class Network:
    """Namespaces joined by a bridge in a hub namespace of their own, on the
    private subnet 10.231.19.0/24 that exists only inside them. Each member
    gets one address; `cut` and `heal` take its link down and up."""

    def __init__(self):
        self.tag = uuid.uuid4().hex[:6]
        self.hub = f"dfs{self.tag}-hub"
        self.members: dict[str, tuple[str, str, str]] = {}
        self.made: list[str] = []

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def __enter__(self) -> "Network":
        try:
            self._ip("netns", "add", self.hub)
            self.made.append(self.hub)
            self._ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            self._ip("-n", self.hub, "link", "set", "br0", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def add(self, name: str) -> str:
        """A namespace for `name`; returns its address."""
        ns = f"dfs{self.tag}-{name}"
        host = len(self.members) + 2
        addr = f"{SUBNET}.{host}"
        hub_end = f"v{self.tag}{host}"
        self._ip("netns", "add", ns)
        self.made.append(ns)
        self._ip("-n", ns, "link", "set", "lo", "up")
        self._ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", hub_end,
                 "netns", self.hub)
        self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        self._ip("-n", ns, "link", "set", "eth0", "up")
        self._ip("-n", self.hub, "link", "set", hub_end, "master", "br0")
        self._ip("-n", self.hub, "link", "set", hub_end, "up")
        self.members[name] = (ns, addr, hub_end)
        return addr

    def ns(self, name: str) -> str:
        return self.members[name][0]

    def run_in(self, name: str) -> list[str]:
        """Command prefix running a program in `name`'s network namespace only
        (the mount namespace stays the host's, so FUSE mounts are visible)."""
        return ["nsenter", f"--net=/run/netns/{self.ns(name)}"]

    def cut(self, name: str) -> None:
        self._ip("-n", self.hub, "link", "set", self.members[name][2], "down")

    def heal(self, name: str) -> None:
        self._ip("-n", self.hub, "link", "set", self.members[name][2], "up")

    def block(self, name: str, addr: str) -> None:
        """Cut `name` off from one address only (a blackhole route)."""
        self._ip("-n", self.ns(name), "route", "add", "blackhole", f"{addr}/32")

    def unblock(self, name: str, addr: str) -> None:
        self._ip("-n", self.ns(name), "route", "del", "blackhole", f"{addr}/32")

    def __exit__(self, *exc) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()


# ---- damage on the wire --------------------------------------------------------

class Tamper:
    """A TCP proxy in front of one server that passes every frame through
    (a 4-byte big-endian length, then that many bytes: dfs/framing.py) as it
    came, except that while armed it flips one byte in the middle of the next
    frame of at least LARGE bytes going one way: "in" (to the server: a
    write's data) or "out" (from it: a read's data). It keeps, for each write
    request that passes, whether it carried CRCs; with `greet_as`, it
    rewrites the server's greeting to give that protocol version (auth.py),
    as an older server would."""

    LARGE = 64 * 1024

    def __init__(self, greet_as: int | None = None):
        self.greet_as = greet_as
        # (op, whether its data came with CRCs) of each write request seen.
        self.writes: list[tuple[str, bool]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.target: str | None = None
        self.armed = {"in": 0, "out": 0}
        self.damaged = {"in": 0, "out": 0}
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, way: str) -> None:
        with self.lock:
            self.armed[way] += 1

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            while self.target is None:
                time.sleep(0.05)
            host, port = self.target.rsplit(":", 1)
            try:
                server = socket.create_connection((host, int(port)))
            except OSError:
                client.close()
                continue
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, "in"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "out"), daemon=True).start()

    @staticmethod
    def _exactly(sock: socket.socket, count: int) -> bytearray | None:
        data = bytearray()
        while len(data) < count:
            piece = sock.recv(count - len(data))
            if not piece:
                return None
            data += piece
        return data

    def _pump(self, source: socket.socket, sink: socket.socket, way: str) -> None:
        try:
            for frame in itertools.count():
                header = self._exactly(source, 4)
                body = header and self._exactly(source, int.from_bytes(header, "big"))
                if body is None:
                    break
                if frame == 0 and way == "out" and self.greet_as is not None:
                    greeting = msgpack.unpackb(body)
                    greeting["dfs"] = self.greet_as
                    body = bytearray(msgpack.packb(greeting))
                    header = len(body).to_bytes(4, "big")
                if frame > 0 and way == "in":
                    self._note(body)
                with self.lock:
                    if len(body) >= self.LARGE and self.armed[way]:
                        self.armed[way] -= 1
                        self.damaged[way] += 1
                        body[len(body) // 2] ^= 0x01
                sink.sendall(header + body)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _note(self, body: bytearray) -> None:
        request = msgpack.unpackb(body)
        if request[2] == "write":
            self.writes.append(("write", "crc" in request[3]))
        elif request[2] == "write_extents":
            self.writes.append(("write_extents",
                                all(len(extent) == 3 for extent in request[3]["extents"])))

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for sock in self.sockets:
            sock.close()
