"""Where new chunks come from: fresh chunk ids, and empty chunks made ahead
of need.

A chunk is made by giving it a durable empty replica on each chosen server:
a file, its header and the folder synced. The first write into a new chunk
waited for that, and on a disk the servers share their syncs queue behind
each other: about 3 of the 7 ms a 4 KiB file took to write whole on the
local cluster. So the pool keeps up to SPARES empty chunks for each replica
count in use, made in the background, and a new chunk costs the writer only
the commit that maps it into the file.

Spares exist in this process's memory only, and their ids stay in
`Replicas.creating` until a file takes them: registration and fsck leave
their replicas alone meanwhile. After a restart the table knows nothing of
them, and their replicas are deleted as any replica the table does not know
(cluster.py). A spare is placed when it is made, so it goes stale when one of
its servers dies or comes back without it; it is then dropped, not handed out.
"""

import errno
from collections import deque
from dataclasses import dataclass

import trio

from dfs import logs
from dfs.errors import DfsError

from .context import Context
from .replicas import Replicas
from .store import Tx

log = logs.get_logger("metaserver")

# Chunk ids are taken from the database this many at a time, so that a new
# chunk costs no commit of its own before its replicas are made; a restart
# leaves the rest of a block unused.
CHUNK_IDS_AT_ONCE = 1024
# Empty chunks kept ready per replica count: a burst of new files longer
# than this waits for chunks made on demand, as without the pool.
SPARES = 16
# After a spare could not be made (too few live servers, a refusal), the
# pool waits this long before trying again; writers make their own meanwhile.
RETRY_SECONDS = 5.0


@dataclass
class EmptyChunk:
    """A chunk with a durable empty replica on each of `csids`, in no file yet."""
    chunk_id: int
    csids: list[int]


class ChunkPool:
    def __init__(self, ctx: Context, replicas: Replicas):
        self.ctx = ctx
        self.replicas = replicas
        self._ids = range(0)
        self._ids_lock = trio.Lock()
        # Replica count -> spares, oldest first. A count is stocked from the
        # first time a writer asks for it.
        self._spares: dict[int, deque[EmptyChunk]] = {}
        self._short = trio.Event()
        self.taken = 0
        self.dropped = 0

    async def new_id(self) -> int:
        async with self._ids_lock:
            if not self._ids:
                first = await self.ctx.store.write(
                    lambda tx: tx.next_id("chunk", CHUNK_IDS_AT_ONCE))
                self._ids = range(first, first + CHUNK_IDS_AT_ONCE)
            chunk_id, self._ids = self._ids[0], self._ids[1:]
            return chunk_id

    def spares(self) -> int:
        return sum(len(spares) for spares in self._spares.values())

    async def take(self, count: int) -> EmptyChunk | None:
        """A spare on `count` servers, all alive and none draining, or None. Its id stays in
        `Replicas.creating`: the caller records the chunk, discards it, and
        then calls `restock` (as after `make`)."""
        spares = self._spares.setdefault(count, deque())
        while spares:
            spare = spares.popleft()
            registry = self.ctx.registry
            if all(registry.alive(c) and not registry.draining(c) for c in spare.csids):
                self.taken += 1
                return spare
            await self._drop([spare], "a server of it is not alive or is draining")
        return None

    def restock(self) -> None:
        """Make up for what was taken. Called once the taker's commit is
        done: making spares takes the event loop and the disks for a while,
        and the writer waits for that commit."""
        self._short.set()

    async def registered(self, csid: int, held: set[int]) -> None:
        """Server `csid` (re)registered holding `held`: drop the spares it
        should hold and does not."""
        await self._drop_where(lambda s: csid in s.csids and s.chunk_id not in held,
                               "its server came back without it")

    async def leaving(self, csid: int) -> None:
        """Server `csid` is draining or removed: drop the spares on it."""
        await self._drop_where(lambda s: csid in s.csids, "a server of it is leaving")

    async def _drop_where(self, doomed, why: str) -> None:
        for spares in self._spares.values():
            lost = [s for s in spares if doomed(s)]
            for spare in lost:
                spares.remove(spare)
            if lost:
                await self._drop(lost, why)
                self.restock()

    async def run(self) -> None:
        """Keep each replica count asked for stocked with SPARES spares."""
        while True:
            await self._short.wait()
            self._short = trio.Event()
            for count, spares in list(self._spares.items()):
                while len(spares) < SPARES:
                    try:
                        spare = await self._spare(count)
                    except DfsError as exc:
                        log.error("making a spare chunk failed", replicas=count, error=str(exc))
                        spare = None
                    if spare is None:
                        await trio.sleep(RETRY_SECONDS)
                        self.restock()
                        break
                    spares.append(spare)

    async def make(self, chosen: list) -> EmptyChunk:
        """A chunk made now, on those of the `chosen` servers that make its
        empty replica; its id in `Replicas.creating`, as a taken spare's is.
        A server that refused may have made one all the same: that is
        garbage. ENOSPC if none made it."""
        chunk_id = await self.new_id()
        self.replicas.creating.add(chunk_id)
        try:
            created = await self.replicas.on_servers(
                chunk_id, [(s.csid, s.addr) for s in chosen],
                [("create", {"chunk": chunk_id, "version": 1})])
            refused = [(s.csid, chunk_id) for s in chosen if s.csid not in created]
            if refused:
                await self._doom(refused)
            if not created:
                raise DfsError(errno.ENOSPC, f"no chunk server could create chunk {chunk_id}")
        except BaseException:
            self.replicas.creating.discard(chunk_id)
            raise
        return EmptyChunk(chunk_id, created)

    async def _spare(self, count: int) -> EmptyChunk | None:
        room = self.ctx.settings.chunk_size
        if len(self.ctx.registry.candidates(room)) < count:
            return None
        spare = await self.make(self.ctx.registry.place(count, room))
        if len(spare.csids) < count:
            await self._drop([spare], "not every server made it")
            return None
        return spare

    async def _drop(self, dropped: list[EmptyChunk], why: str) -> None:
        await self._doom([(csid, s.chunk_id) for s in dropped for csid in s.csids])
        for spare in dropped:
            self.replicas.creating.discard(spare.chunk_id)
        self.dropped += len(dropped)
        log.info("spare chunks dropped", chunks=[s.chunk_id for s in dropped], reason=why)

    async def _doom(self, replicas: list[tuple[int, int]]) -> None:
        """Make garbage of (server, chunk) replicas, unless the metaserver is
        stopping: then the next start deletes them as replicas it does not know."""
        def doom(tx: Tx) -> None:
            for csid, chunk_id in replicas:
                tx.add_garbage(csid, chunk_id)

        try:
            await self.ctx.store.write(doom)
        except DfsError as exc:
            if exc.errno != errno.ESHUTDOWN:
                raise
