"""A chunk's replica set, changed one chunk at a time: version moves that fence
out old writers and stale replicas, waiting for replicas to be heard from, and
the copies being made to restore R.

Why a copy fences first: a copy reads the source while it is at version v; a
client still writing at v could land bytes after the copy read that block, and
the copy would claim v without them. So a copy of a chunk under a write
lease starts by moving the survivors to v+1 (old writers get ESTALE and ask
again), and a new write lease waits until the copy is done (or abandons it),
then moves the version again to take the new replica in. Without a lease
nobody may write the chunk (clients never use a lease past its end), so the
copy starts at once.
"""

import errno
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from dfs import logs
from dfs.errors import DfsError

from . import chunktable, restore
from .context import Context
from .records import Chunk
from .store import Tx

log = logs.get_logger("metaserver")

CALL_TIMEOUT = 10.0
# How long a writer waits for a copy of its chunk before the copy is abandoned.
COPY_WAIT = 20.0
# How long an operation on a chunk waits for one of its replicas (or, for a
# new chunk, any server) to be heard from: after a metaserver restart the chunk
# servers come back within a few heartbeats.
SERVER_WAIT = 15.0
POLL = 0.1


class KeyedLocks:
    """One trio.Lock per key (an inode, a chunk), dropped when nobody holds it."""

    def __init__(self):
        self._locks: dict[int, tuple[trio.Lock, list]] = {}

    @asynccontextmanager
    async def hold(self, key: int):
        lock, users = self._locks.setdefault(key, (trio.Lock(), []))
        users.append(None)
        try:
            async with lock:
                yield
        finally:
            users.pop()
            if not users:
                del self._locks[key]


@dataclass
class Copy:
    """A replica being made: `target` fetches `chunk` at `version` from `source`."""
    chunk: int
    version: int
    target: int
    source: str
    # A copy beyond the chunk's factor, not made because the chunk is short:
    # to even out the servers' disks or to spread its copies over zones.
    extra: bool = False
    handed_at: float = 0.0
    done: trio.Event = field(default_factory=trio.Event)


def record_version(tx: Tx, chunk_id: int, version: int, holders: list[int]) -> None:
    """The chunk is now at `version` on `holders`; every other replica is dropped."""
    chunk = tx.chunk(chunk_id)
    if chunk is None:
        return
    for csid in list(chunk.locations):
        if csid not in holders:
            chunktable.drop_location(tx, chunk_id, chunk, csid)
    chunk.version = version
    tx.put_chunk(chunk_id, chunk)


class Replicas:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.locks = KeyedLocks()
        self.copies: dict[int, Copy] = {}
        # Chunk ids being created, not yet in the table (fsck must not call
        # their replicas orphans).
        self.creating: set[int] = set()
        self.version_floor = ctx.store.read(restore.floor)

    def next_version(self, chunk: Chunk) -> int:
        """The version a chunk moves to next: above the ones a restored
        database may not know of (restore.py)."""
        return max(chunk.version + 1, self.version_floor)

    async def on_servers(self, chunk_id: int, servers: list, steps: list) -> list[int]:
        """Run `steps` ([(op, args)...], in order) on each [csid, addr]; return the
        csids where all succeeded."""
        done = []

        async def one(csid: int, addr: str) -> None:
            client = self.ctx.chunkservers.get(addr)
            try:
                for op, args in steps:
                    await client.call(op, timeout=CALL_TIMEOUT, **args)
            except DfsError as exc:
                log.warning("replica refused", op=op, chunk=chunk_id, csid=csid,
                            error=str(exc))
                return
            done.append(csid)

        async with trio.open_nursery() as nursery:
            for csid, addr in servers:
                nursery.start_soon(one, csid, addr)
        return done

    async def live_of(self, chunk_id: int, chunk: Chunk) -> list[list]:
        """[csid, addr] of the chunk's live replicas, waiting up to SERVER_WAIT
        for one when none is heard from yet."""
        registry = self.ctx.registry
        with trio.move_on_after(SERVER_WAIT):
            while not registry.live_locations(chunk.locations) and chunk.locations:
                await trio.sleep(POLL)
        return registry.live_locations(chunk.locations)

    async def move_version(self, chunk_id: int, chunk: Chunk, exclude=frozenset()):
        """Move the live replicas not in `exclude` to a new version (the next,
        or more after a restore: restore.py) and record it; the others are
        dropped. Caller holds the chunk's lock. Returns
        (version, holders); EIO when no replica could be moved (nothing is
        dropped then).

        `exclude` never empties the set: when a client reports every live
        replica as failed, it is more likely cut off itself, and dropping
        them all would lose the chunk."""
        live = await self.live_of(chunk_id, chunk)
        if not live:
            raise DfsError(errno.EIO, f"chunk {chunk_id} has no live replica")
        live = [loc for loc in live if loc[0] not in exclude] or live
        new = self.next_version(chunk)
        moved = await self.on_servers(
            chunk_id, live, [("set_version", {"chunk": chunk_id, "old": chunk.version,
                                              "new": new})])
        if not moved:
            raise DfsError(errno.EIO, f"no replica of chunk {chunk_id} took version {new}")
        await self.ctx.store.write(lambda tx: record_version(tx, chunk_id, new, moved))
        self.ctx.leases.revoke(chunk_id)
        dropped = sorted(set(chunk.locations) - set(moved))
        log.info("chunk version moved", chunk=chunk_id, version=new, csids=moved,
                 dropped=dropped)
        return new, moved

    @asynccontextmanager
    async def quiet(self, chunk_id: int):
        """Hold the chunk's lock with no copy of it in progress: wait for a copy
        to finish, abandoning it after COPY_WAIT."""
        deadline = trio.current_time() + COPY_WAIT
        while True:
            copy = self.copies.get(chunk_id)
            if copy is not None:
                with trio.move_on_at(deadline):
                    await copy.done.wait()
                if not copy.done.is_set():
                    await self.abandon(copy, "a writer waited too long")
            async with self.locks.hold(chunk_id):
                if chunk_id not in self.copies:
                    yield
                    return

    async def abandon(self, copy: Copy, why: str) -> None:
        """Give up on a copy; whatever the target made is deleted."""
        if self.copies.get(copy.chunk) is copy:
            del self.copies[copy.chunk]
        copy.done.set()
        await self.ctx.store.write(lambda tx: tx.add_garbage(copy.target, copy.chunk))
        log.warning("replication abandoned", chunk=copy.chunk, version=copy.version,
                    target=copy.target, reason=why)

    def finished(self, copy: Copy) -> None:
        if self.copies.get(copy.chunk) is copy:
            del self.copies[copy.chunk]
        copy.done.set()
