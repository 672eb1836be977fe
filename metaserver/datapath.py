"""The data path: chunk locations, write leases, quota reservations, commits
and truncation, which must reach the chunk servers before the metadata changes.
A chunk that snapshots share is copied before anything changes it.
"""

import errno
import time
from contextlib import asynccontextmanager

import trio

from dfs import logs
from dfs.errors import DfsError

from . import chunktable, quotas
from .chunkpool import ChunkPool
from .context import Context
from .records import Chunk
from .replicas import POLL, SERVER_WAIT, KeyedLocks, Replicas, record_version
from .sessions import Reservation
from .store import Tx

log = logs.get_logger("metaserver")

# How far past the requested end a reservation reaches, so a streaming writer
# asks again only every so often.
GRANT_AHEAD = 64 << 20
GRANT_UNLIMITED = 1 << 30
# Write leases ended side by side by a snapshot or a fence.
REVOKES_AT_ONCE = 32


class Gate:
    """Lets changes to chunks through while open; `closed` waits until none is
    inside, keeps new ones out, and lets them in again at its end."""

    def __init__(self):
        self.inside = 0
        self.closers = 0

    @asynccontextmanager
    async def passing(self):
        while self.closers:
            await trio.sleep(POLL)
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1

    @asynccontextmanager
    async def closed(self):
        self.closers += 1
        try:
            while self.inside:
                await trio.sleep(POLL / 10)
            yield
        finally:
            self.closers -= 1


class DataPath:
    def __init__(self, ctx: Context, replicas: Replicas, pool: ChunkPool, settled: trio.Event):
        self.ctx = ctx
        self.replicas = replicas
        self.pool = pool
        # No replica is handed out or cut before this is set (Cluster.settled).
        self.settled = settled
        self.locks = KeyedLocks()
        # Closed while a snapshot is taken: no lease is granted and no chunk cut.
        self.gate = Gate()

    def _reply(self, chunk_id: int, version: int, csids: list[int], until=None) -> dict:
        registry = self.ctx.registry
        servers = registry.live_locations(csids)
        reply = {"chunk": chunk_id, "version": version, "servers": servers,
                 "zones": [registry.servers[csid].zone for csid, _addr in servers]}
        if until is not None:
            reply["lease_until"] = until
        return reply

    @staticmethod
    def _regular(tx: Tx, ino: int):
        inode = tx.inode(ino)
        if inode.is_dir:
            raise DfsError(errno.EISDIR, f"inode {ino} is a directory")
        if not inode.is_reg:
            raise DfsError(errno.EINVAL, f"inode {ino} is not a regular file")
        return inode

    def _mapped(self, tx: Tx, ino: int, index: int):
        self._regular(tx, ino)
        if index < 0:
            raise DfsError(errno.EINVAL, "chunk index must not be negative")
        chunk_id = tx.chunk_id(ino, index)
        return chunk_id, (tx.chunk(chunk_id) if chunk_id else None)

    # --- handlers -----------------------------------------------------------
    async def _replicas_known(self) -> None:
        if not self.settled.is_set():
            await self.settled.wait()

    async def chunk_read(self, ino: int, index: int) -> dict:
        await self._replicas_known()
        chunk_id, chunk = self.ctx.store.read(lambda tx: self._mapped(tx, ino, index))
        if chunk is None:
            return {"chunk": 0, "version": 0, "servers": [], "zones": []}
        await self.replicas.live_of(chunk_id, chunk)
        return self._reply(chunk_id, chunk.version, chunk.locations)

    async def chunk_write(self, ino: int, index: int, session: int, failed: list | None) -> dict:
        """A write lease. The current one is handed out again only while every
        replica is alive and none failed the client; otherwise the replicas
        left are moved to a new version, so a replica that missed writes can
        never serve or take this chunk again."""
        self.ctx.sessions.check(session)
        failed = {addr for addr in failed or () if isinstance(addr, str)}
        await self._replicas_known()
        async with self.gate.passing(), self.locks.hold(ino):
            chunk_id, chunk = self.ctx.store.read(lambda tx: self._mapped(tx, ino, index))
            if chunk is None:
                reply = await self._allocate(ino, index)
                self.ctx.fences.leased(session, reply["chunk"], reply["lease_until"])
                return reply
            async with self.replicas.quiet(chunk_id):
                chunk = self.ctx.store.read(lambda tx: tx.chunk(chunk_id))
                if chunk is None:
                    raise DfsError(errno.ENOENT, f"chunk {chunk_id} of inode {ino} is gone")
                if chunk.refs > 1:
                    async with self._copied(chunk_id, chunk) as (new_id, holders):
                        await self.ctx.store.write(lambda tx: self._remap(
                            tx, ino, index, chunk_id, new_id, holders, chunk.replicas))
                    until = self.ctx.leases.grant(new_id)
                    self.ctx.fences.leased(session, new_id, until)
                    return self._reply(new_id, 1, holders, until)
                registry = self.ctx.registry
                exclude = {csid for csid in chunk.locations
                           if csid in registry.servers and registry.addr(csid) in failed}
                until = self.ctx.leases.active(chunk_id)
                whole = all(registry.alive(csid) for csid in chunk.locations)
                version, holders = chunk.version, chunk.locations
                if until is None or not whole or exclude:
                    if exclude:
                        log.warning("client reported failed replicas", chunk=chunk_id, ino=ino,
                                    csids=sorted(exclude))
                    version, holders = await self.replicas.move_version(chunk_id, chunk, exclude)
                    until = self.ctx.leases.grant(chunk_id)
                self.ctx.fences.leased(session, chunk_id, until)
                return self._reply(chunk_id, version, holders, until)

    @asynccontextmanager
    async def _copied(self, chunk_id: int, chunk: Chunk, length: int | None = None):
        """A copy of a shared chunk (its first `length` bytes) on the live
        servers holding it, as (new id, csids): the caller records it inside
        the block; if it does not, the copies are deleted."""
        live = await self.replicas.live_of(chunk_id, chunk)
        if not live:
            raise DfsError(errno.EIO, f"chunk {chunk_id} has no live replica to copy")
        new_id = await self.pool.new_id()
        self.replicas.creating.add(new_id)
        created = []
        try:
            created = await self.replicas.on_servers(
                new_id, live, [("copy", {"chunk": new_id, "version": 1, "source": chunk_id,
                                         "source_version": chunk.version, "length": length})])
            if not created:
                raise DfsError(errno.EIO, f"no replica of shared chunk {chunk_id} could be copied")
            yield new_id, created
        except BaseException:
            def discard(tx: Tx) -> None:
                for csid in created:
                    tx.add_garbage(csid, new_id)

            if created:
                with trio.CancelScope(shield=True):
                    await self.ctx.store.write(discard)
            raise
        finally:
            self.replicas.creating.discard(new_id)
        log.info("shared chunk copied", chunk=new_id, source=chunk_id, csids=created,
                 length=length)

    @staticmethod
    def _remap(tx: Tx, ino: int, index: int, old_id: int, new_id: int, holders: list[int],
               replicas: int) -> None:
        """Map chunk `index` of `ino` to its own copy `new_id` of the shared `old_id`."""
        if tx.get_inode(ino) is None or tx.chunk_id(ino, index) != old_id:
            raise DfsError(errno.ESTALE, f"chunk {index} of inode {ino} changed meanwhile")
        tx.map_chunk(ino, index, new_id)
        tx.put_chunk(new_id, Chunk(1, list(holders), replicas=replicas))
        chunktable.release_chunk(tx, old_id)

    async def revoke_all(self, chunk_ids: list[int]) -> None:
        """`revoke` each chunk, REVOKES_AT_ONCE at a time: their replicas'
        syncs then overlap and their records share commits."""
        pending = iter(chunk_ids)

        async def revoker() -> None:
            for chunk_id in pending:
                await self.revoke(chunk_id)

        async with trio.open_nursery() as nursery:
            for _ in range(min(REVOKES_AT_ONCE, len(chunk_ids))):
                nursery.start_soon(revoker)

    async def revoke(self, chunk_id: int) -> None:
        """End the write lease on `chunk_id`: its replicas move to a new
        version, so writes under the old one are refused."""
        await self._replicas_known()
        async with self.replicas.quiet(chunk_id):
            chunk = self.ctx.store.read(lambda tx: tx.chunk(chunk_id))
            if chunk is None or self.ctx.leases.active(chunk_id) is None:
                return
            try:
                await self.replicas.move_version(chunk_id, chunk)
            except DfsError as exc:
                # No replica is in reach now; the next lease on the chunk then
                # moves the version before anyone writes under it.
                self.ctx.leases.revoke(chunk_id)
                log.warning("cannot move a fenced chunk's version", chunk=chunk_id,
                            error=str(exc))

    async def _place(self, count: int) -> list:
        """`count` servers for a new chunk; while known servers are not heard
        from yet (a restart) wait a little for them rather than answer ENOSPC."""
        registry = self.ctx.registry
        with trio.move_on_after(SERVER_WAIT):
            while len(registry.live()) < min(count, len(registry.servers)):
                await trio.sleep(POLL)
        return registry.place(count, self.ctx.settings.chunk_size)

    async def _allocate(self, ino: int, index: int) -> dict:
        wanted = self.ctx.settings.wanted(self.ctx.store.read(lambda tx: tx.inode(ino).replicas))
        chunk = await self.pool.take(wanted)
        ahead = chunk is not None
        if chunk is None:
            chosen = await self._place(wanted)
            if not chosen:
                raise DfsError(errno.ENOSPC, "no live chunk server has room for a new chunk")
            chunk = await self.pool.make(chosen)
        try:
            def record(tx: Tx) -> bool:
                if tx.get_inode(ino) is None:
                    for csid in chunk.csids:
                        tx.add_garbage(csid, chunk.chunk_id)
                    return False
                tx.map_chunk(ino, index, chunk.chunk_id)
                tx.put_chunk(chunk.chunk_id,
                             Chunk(1, chunk.csids, replicas=tx.inode(ino).replicas))
                return True

            if not await self.ctx.store.write(record):
                raise DfsError(errno.ENOENT, f"inode {ino} was deleted")
        finally:
            self.replicas.creating.discard(chunk.chunk_id)
            self.pool.restock()
        log.info("chunk created", chunk=chunk.chunk_id, ino=ino, index=index, csids=chunk.csids,
                 wanted=wanted, made_ahead=ahead)
        return self._reply(chunk.chunk_id, 1, chunk.csids, self.ctx.leases.grant(chunk.chunk_id))

    # --- sizes: reservations, commits, truncation -----------------------------
    def reserved(self, quota_dirs, ino: int, session: int | None = None) -> dict[int, int]:
        """Bytes promised to writers, per quota directory of `quota_dirs`,
        but for the grants on `ino` (only `session`'s, if given)."""
        return self.ctx.reservations.outstanding(
            quota_dirs, lambda inodes: self.ctx.store.read(lambda tx: tx.sizes(inodes)),
            ino, session)

    def _held_by_others(self, ino: int) -> dict[int, int]:
        """What writers of other files hold under the quotas `ino` counts in."""
        chain = self.ctx.store.read(
            lambda tx: quotas.chain(tx, tx.inode(ino).parent) if tx.get_inode(ino) else [])
        return self.reserved(chain, ino)

    async def reserve(self, ino: int, session: int, end: int) -> dict:
        self.ctx.sessions.check(session)
        if end < 0:
            raise DfsError(errno.EINVAL, "reserve: end must not be negative")
        granted, chain = self._grant(ino, session, end)
        self.ctx.reservations.grant(session, ino, Reservation(end, granted, tuple(chain)))
        return {"granted": granted}

    def first_grant(self, ino: int, session: int) -> int:
        """How far a file just made may be written before its writer asks:
        what `reserve` to end 0 would grant, so that a small file's first
        write needs no round trip of its own. Such a grant holds nothing, so
        nothing is recorded. 0 if that cannot be said (the file is gone
        already): the writer asks."""
        try:
            return self._grant(ino, session, 0)[0]
        except DfsError as exc:
            log.info("no grant for a new file", ino=ino, error=exc.message)
            return 0

    def _grant(self, ino: int, session: int, end: int) -> tuple[int, list[int]]:
        """(how far the file may be written, the quota directories that say
        so); EDQUOT if not to `end`."""
        def look(tx: Tx):
            inode = self._regular(tx, ino)
            chain = quotas.chain(tx, inode.parent)
            return inode.size, chain, [(q, tx.quota(q)) for q in chain]

        size, chain, limits = self.ctx.store.read(look)
        limited = [(q, quota) for q, quota in limits if quota.bytes_limit]
        held = self.reserved([q for q, _ in limited], ino, session)
        granted = end + (GRANT_AHEAD if limited else GRANT_UNLIMITED)
        for q, quota in limited:
            room_end = size + quota.bytes_limit - quota.bytes_used - held.get(q, 0)
            if end > size and end > room_end:
                raise DfsError(errno.EDQUOT, f"byte quota of directory {q} exceeded")
            granted = min(granted, room_end)
        return max(granted, end), chain

    async def commit(self, ino: int, session: int, size: int, mtime: int,
                     quiet: bool | None) -> dict:
        if size < 0:
            raise DfsError(errno.EINVAL, "commit: size must not be negative")
        # Before the commit: an open elsewhere that sees its result must also
        # see that quiet writes may follow it.
        self.ctx.opens.set_quiet(ino, session, bool(quiet))
        held = self._held_by_others(ino)
        return await self.ctx.store.write(
            lambda tx: self.ctx.namespace.grow(tx, time.time_ns(), ino, size, mtime, held))

    async def setattr_size(self, ino: int, changes: dict, token: bytes | None) -> dict:
        """setattr with a size: the chunk cut by a shrink is truncated on its
        replicas, under a new version, before the metadata says so; a chunk
        that snapshots share is copied up to the cut instead."""
        await self._replicas_known()
        async with self.gate.passing(), self.locks.hold(ino):
            if token is not None and self.ctx.store.read(lambda tx: tx.stored_reply(token)):
                plan = None
            else:
                plan = self.ctx.store.read(lambda tx: self._cut_plan(tx, ino, changes["size"]))
            if plan is None:
                return await self._apply_size(ino, changes, token, None)
            index, chunk_id, length = plan
            async with self.replicas.quiet(chunk_id):
                chunk = self.ctx.store.read(lambda tx: tx.chunk(chunk_id))
                if chunk.refs > 1:
                    async with self._copied(chunk_id, chunk, length) as (new_id, holders):
                        return await self._apply_size(ino, changes, token, lambda tx: self._remap(
                            tx, ino, index, chunk_id, new_id, holders, chunk.replicas))
                new = self.replicas.next_version(chunk)
                done = await self.replicas.on_servers(
                    chunk_id, await self.replicas.live_of(chunk_id, chunk),
                    [("set_version", {"chunk": chunk_id, "old": chunk.version, "new": new}),
                     ("truncate", {"chunk": chunk_id, "version": new, "length": length})])
                if not done:
                    raise DfsError(errno.EIO, f"no replica of chunk {chunk_id} could be cut")
                self.ctx.leases.revoke(chunk_id)
                return await self._apply_size(ino, changes, token,
                                              lambda tx: record_version(tx, chunk_id, new, done))

    async def _apply_size(self, ino: int, changes: dict, token, cut) -> dict:
        """Apply the change of size, after `cut(tx)` (the cut chunk's new state)."""
        held = self._held_by_others(ino)

        def apply(tx: Tx) -> dict:
            if cut is not None:
                cut(tx)
            return self.ctx.namespace.setattr(tx, time.time_ns(), ino, changes, held)

        return await self.ctx.store.write(apply, token)

    def _cut_plan(self, tx: Tx, ino: int, size: int):
        inode = self._regular(tx, ino)
        chunk_size = self.ctx.settings.chunk_size
        if size >= inode.size or size % chunk_size == 0:
            return None
        index = size // chunk_size
        chunk_id = tx.chunk_id(ino, index)
        if not chunk_id:
            return None
        return index, chunk_id, size - index * chunk_size
