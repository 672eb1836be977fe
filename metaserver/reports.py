"""What an administrator asks the metaserver about, read-only: the sessions
(mounts and other clients) and what each holds, where a file's chunks are,
and what lies beneath a directory.
"""

import errno
import stat
import time

from dfs.errors import DfsError

from . import quotas
from .context import Context
from .store import Tx

# The most chunks one chunk_list reply carries (each about 60 bytes per replica).
CHUNK_LIST_MAX = 4096


class Reports:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def session_list(self) -> dict:
        store = self.ctx.store
        sessions = store.read(lambda tx: list(tx.all_sessions()))
        reserved = self.ctx.reservations.per_session(
            lambda inodes: store.read(lambda tx: tx.sizes(inodes)))
        open_files: dict[int, int] = {}
        with self.ctx.opens.lock:
            for holders in self.ctx.opens.counts.values():
                for sid in holders:
                    open_files[sid] = open_files.get(sid, 0) + 1
            restored = set(self.ctx.opens.restored)
        now = time.monotonic()
        listed = []
        for sid, record in sessions:
            deadline = self.ctx.sessions.deadlines.get(sid)
            files, nbytes = reserved.get(sid, (0, 0))
            leases, exclusive = self.ctx.dirleases.held_by(sid)
            listed.append({
                "session": sid, "host": record.host, "mountpoint": record.mountpoint,
                "pid": record.pid, "opened": record.opened,
                "expires": None if deadline is None else max(0.0, deadline - now),
                "open": open_files.get(sid, 0), "reserving": files, "reserved": nbytes,
                "fence": [record.fence_ino, record.fence_epoch] if record.fence_ino else None,
                "restored": sid in restored, "folder_leases": leases,
                "exclusive_leases": exclusive})
        return {"sessions": listed}

    async def chunk_list(self, ino: int, start: int, limit: int) -> dict:
        if start < 0 or not 0 < limit <= CHUNK_LIST_MAX:
            raise DfsError(errno.EINVAL, f"chunk_list: start must be >= 0 and limit "
                                         f"1..{CHUNK_LIST_MAX}")

        def read(tx: Tx) -> tuple[list, int | None]:
            inode = tx.inode(ino)
            if not inode.is_reg:
                raise DfsError(errno.EISDIR if inode.is_dir else errno.EINVAL,
                               f"inode {ino} is not a regular file: it has no chunks")
            rows, following = [], None
            for index, chunk_id in tx.chunks_of(ino, start):
                if len(rows) == limit:
                    following = index
                    break
                rows.append((index, chunk_id, tx.chunk(chunk_id)))
            return rows, following

        rows, following = self.ctx.store.read(read)
        registry = self.ctx.registry
        chunks = []
        for index, chunk_id, chunk in rows:
            if chunk is None:
                chunks.append({"index": index, "chunk": chunk_id, "version": 0, "wanted": 0,
                               "servers": []})
                continue
            known = [registry.servers.get(csid) for csid in chunk.locations]
            chunks.append({
                "index": index, "chunk": chunk_id, "version": chunk.version,
                "wanted": self.ctx.settings.wanted(chunk.replicas),
                "servers": [[csid, server.addr if server else "", registry.alive(csid)]
                            for csid, server in zip(chunk.locations, known)],
                "zones": [server.zone if server else "" for server in known]})
        return {"chunks": chunks, "next": following,
                "chunk_size": self.ctx.settings.chunk_size}

    async def summary(self, ino: int) -> dict:
        registry = self.ctx.registry

        def count(tx: Tx) -> dict:
            top = tx.inode(ino)
            kinds = {"files": 0, "directories": 0, "symlinks": 0, "others": 0}
            nbytes = 0
            seen_chunks: set[int] = set()
            under = lost = 0
            for inode in [top, *tx.subtree(ino)] if top.is_dir else [top]:
                kinds[_kind(inode.mode)] += 1
                nbytes += quotas.usage(inode)
                if not inode.is_reg:
                    continue
                for _, chunk_id in tx.chunks_of(inode.ino):
                    if chunk_id in seen_chunks:
                        continue
                    seen_chunks.add(chunk_id)
                    chunk = tx.chunk(chunk_id)
                    live = 0 if chunk is None else sum(
                        1 for csid in chunk.locations if registry.alive(csid))
                    if live == 0:
                        lost += 1
                    elif live < self.ctx.settings.wanted(chunk.replicas):
                        under += 1
            return {**kinds, "bytes": nbytes, "chunks": len(seen_chunks),
                    "under_replicated": under, "unavailable": lost}

        return await self.ctx.store.read_in_thread(count)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "files"
    if stat.S_ISDIR(mode):
        return "directories"
    if stat.S_ISLNK(mode):
        return "symlinks"
    return "others"
