"""`dfs info` and `dfs sessions`: what the metaserver reports about a path
(gathered page by page) and about its clients, formatted for people.
"""

import stat
import time
from dataclasses import dataclass, field

import trio

from .config import ClusterRef
from .progress import Progress
from .ops import META
from .rpc import Client

# Chunks asked for per chunk_list call (the metaserver's limit).
CHUNK_PAGE = 4096


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


@dataclass
class PathInfo:
    path: str
    attr: dict
    replicas: dict
    # Directories: what lies beneath (the summary operation's reply).
    summary: dict | None = None
    # Regular files: their chunks (chunk_list rows), in index order.
    chunks: list = field(default_factory=list)

    def to_wire(self) -> dict:
        return {"path": self.path, "attr": self.attr, "replicas": self.replicas,
                "summary": self.summary, "chunks": self.chunks}


def info(cluster: ClusterRef, path: str) -> PathInfo:
    """Attributes, replication and either the chunks (a file) or a summary (a directory)."""
    async def run() -> PathInfo:
        client = Client(cluster.meta, cluster.secret, META, retry_for=5.0)
        try:
            attr = await client.call("resolve", path=path.encode())
            ino = attr["ino"]
            found = PathInfo(path, attr, await client.call("replicas_get", ino=ino))
            if stat.S_ISDIR(attr["mode"]):
                found.summary = await client.call("summary", ino=ino)
            elif stat.S_ISREG(attr["mode"]):
                found.chunks = await _chunks(client, ino, attr["size"])
            return found
        finally:
            await client.aclose()

    return trio.run(run)


async def _chunks(client: Client, ino: int, size: int) -> list:
    """Every chunk of a file, a page at a time, with progress through its size."""
    progress = Progress("chunks", size)
    rows: list = []
    start = 0
    while start is not None:
        reply = await client.call("chunk_list", ino=ino, start=start, limit=CHUNK_PAGE)
        rows += reply["chunks"]
        start = reply["next"]
        progress.show(size if start is None else start * reply["chunk_size"],
                      f"{len(rows)} chunks")
    progress.end()
    return rows


def format_info(found: PathInfo) -> str:
    attr = found.attr
    kind = ("directory" if stat.S_ISDIR(attr["mode"]) else "file" if stat.S_ISREG(attr["mode"])
            else "symlink" if stat.S_ISLNK(attr["mode"]) else "special file")
    lines = [f"{found.path}: {kind}, inode {attr['ino']}, mode {stat.filemode(attr['mode'])}, "
             f"owner {attr['uid']}:{attr['gid']}, links {attr['nlink']}",
             f"  modified {_when(attr['mtime'] / 1e9)}",
             f"  replicas: {found.replicas['effective']}"
             + ("" if found.replicas["replicas"] else " (cluster default)")]
    if found.summary is not None:
        s = found.summary
        lines.append(f"  holds {s['files']} file(s), {s['directories'] - 1} folder(s), "
                     f"{s['symlinks']} symlink(s), {s['others']} other(s); "
                     f"{human_size(s['bytes'])} in files")
        lines.append(f"  chunks: {s['chunks']}, under-replicated: {s['under_replicated']}, "
                     f"unavailable: {s['unavailable']}")
    if stat.S_ISREG(attr["mode"]):
        lines.append(f"  size {human_size(attr['size'])} ({attr['size']} bytes), "
                     f"{len(found.chunks)} chunk(s) (holes have none)")
        for row in found.chunks:
            lines.append(_chunk_line(row))
    return "\n".join(lines)


def _chunk_line(row: dict) -> str:
    # From a metaserver older than zones, none.
    zones = row.get("zones") or [""] * len(row["servers"])
    servers = ", ".join(f"#{csid} {addr or '?'}{_zone_note(addr, zone)}"
                        f"{'' if alive else ' (DEAD)'}"
                        for (csid, addr, alive), zone in zip(row["servers"], zones)) or "none"
    live = sum(1 for _, _, alive in row["servers"] if alive)
    state = ("UNAVAILABLE" if live == 0 else
             f"UNDER-REPLICATED ({live} of {row['wanted']})" if live < row["wanted"] else "ok")
    return (f"  chunk {row['index']}: id {row['chunk']} version {row['version']}, "
            f"{state}: {servers}")


def _zone_note(addr: str, zone: str) -> str:
    """The server's zone, unless it is the host of its address (the default)."""
    return f" (zone {zone})" if zone and not addr.startswith(f"{zone}:") else ""


def format_sessions(listed: list[dict]) -> str:
    lines = []
    for s in listed:
        opened = _when(s["opened"]) if s["opened"] else "before this was recorded"
        fence = f", fenced to folder inode {s['fence'][0]} (epoch {s['fence'][1]})" \
            if s["fence"] else ""
        state = ("restored after the metaserver's restart, silent since" if s["restored"]
                 else "expired, being closed" if s["expires"] is None
                 else f"lapses in {s['expires']:.0f}s unless renewed")
        lines.append(f"session {s['session']}: {s['host']}:{s['mountpoint']} pid {s['pid']}, "
                     f"opened {opened}")
        room = (f", room held under quotas: {human_size(s['reserved'])} for "
                f"{s['reserving']} file(s)" if s["reserving"] else "")
        # Absent from a metaserver older than folder leases.
        leases = (f", {s['folder_leases']} folder lease(s)" if s.get("folder_leases")
                  else "")
        if s.get("exclusive_leases"):
            leases += (f" ({s['exclusive_leases']} exclusive: others looking there wait "
                       "for this mount's changes)")
        lines.append(f"  {s['open']} file(s) open{room}{leases}{fence}; {state}")
    lines.append(f"{len(listed)} session(s)")
    return "\n".join(lines)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))

