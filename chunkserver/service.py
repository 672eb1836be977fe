"""The CHUNK operations (see dfs.ops.CHUNK), served from a ChunkStore.

Each chunk has a lock (chunklock.py) held around everything that touches its
replica: reads and syncs share it, so a sequential reader's read-ahead and a
database's reads proceed side by side and never queue behind an fdatasync
run in a thread; anything that changes the replica holds it alone, so a read
never sees a block between its data and its CRC update and writes to one
chunk apply in order. Different chunks proceed in parallel, each in a worker
thread, except for small reads and writes (INLINE_IO) and small syncs
(syncpolicy.py), which cost less on the event loop than a hand-off would.
Small syncs that arrive together (an fsync of a file spread over several
chunks here) run as one group: every replica's writes are started before
the first is waited for, so the disk takes them together rather than one
replica's after another's.
Open replicas are cached (a few hundred at most) so a stream of small
requests does not reopen files.
"""

import errno
import math
import time
from collections import Counter, OrderedDict
from contextlib import asynccontextmanager

import trio

from dfs import logs, ops, transit
from dfs.errors import DfsError
from dfs.framing import MAX_DATA
from dfs.metrics import Histogram
from dfs.rpc import ClientPool, parse_addr

from .chunkfile import MAX_CHUNK, ChecksumError, ChunkFile, HeaderError
from .chunklock import ChunkLock
from .chunkstore import ChunkStore
from .syncpolicy import SyncPolicy

log = logs.get_logger("chunkserver")

MAX_OPEN = 256
# Small reads and writes touch at most a few 64 KiB blocks, usually in the page
# cache: running them on the event loop costs less than a thread hand-off,
# which dominated the latency of 4 KiB random I/O.
INLINE_IO = 128 * 1024
# How long replication waits on a silent source before giving up on it.
PEER_TIMEOUT = 60.0
# How many times a sync on the event loop lets other tasks go first, so that
# the syncs received with it can join it.
GATHER_ROUNDS = 2
SYNCING_OPS = ("write", "write_extents", "sync")
_U64 = 1 << 64


def _check_id(name: str, value: int) -> None:
    if not 0 <= value < _U64:
        raise DfsError(errno.EINVAL, f"{name} {value} is out of range")


def _check_range(chunk: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise DfsError(errno.EINVAL, f"chunk {chunk}: negative offset or length")
    if length > MAX_DATA:
        raise DfsError(errno.EINVAL,
                       f"chunk {chunk}: {length} bytes in one request, the limit is {MAX_DATA}")


class _SyncGroup:
    """Replicas synced together on the event loop, and how each sync ended."""

    def __init__(self):
        self.handles: dict[ChunkFile, None] = {}
        self.synced: set[ChunkFile] = set()
        self.errors: dict[ChunkFile, Exception] = {}
        self.done = trio.Event()

    def add(self, handle: ChunkFile) -> None:
        self.handles[handle] = None

    def run(self) -> None:
        """Sync every replica of the group; wake its members however it ends."""
        try:
            # A lone replica syncs as it always did: starting its checksum
            # file's writes on their own first measured slower for a
            # database's commits.
            if len(self.handles) == 1:
                finish = ChunkFile.sync
            else:
                for handle in self.handles:
                    handle.start_sync()
                finish = ChunkFile.finish_sync
            for handle in self.handles:
                try:
                    finish(handle)
                    self.synced.add(handle)
                except Exception as exc:
                    self.errors[handle] = exc
        finally:
            self.done.set()

    def outcome(self, handle: ChunkFile) -> None:
        """Raise what the sync of `handle` ended with, unless it succeeded."""
        if handle not in self.synced:
            raise self.errors.get(handle) or OSError(
                errno.EIO, "the group's sync stopped before this replica")


class ChunkService:
    def __init__(self, store: ChunkStore, versions: dict[int, int], secret: bytes):
        self.store = store
        # {chunk: version} of every replica held; the truth for registration.
        self.versions = versions
        # When each chunk was last read, written or scrubbed (trio clock).
        self.last_used: dict[int, float] = {}
        self.peers = ClientPool(secret, ops.CHUNK, retry_for=10.0)
        # Bad replicas go to the metaserver link, each (chunk, version) once.
        self._bad_send, self.bad_replicas = trio.open_memory_channel(math.inf)
        self._bad_seen: set[tuple[int, int]] = set()
        self._locks: dict[int, ChunkLock] = {}
        self._open: OrderedDict[int, ChunkFile] = OrderedDict()
        self.syncs = SyncPolicy()
        self._sync_group: _SyncGroup | None = None
        # Requests received and not answered yet, by operation: the server
        # keeps the count (rpc.Server's in_hand).
        self.in_hand: Counter[str] = Counter()
        # For the metrics (main.py).
        self.bytes_read = 0
        self.bytes_written = 0
        self.checksum_failures = 0
        # Requests refused because their data arrived damaged (transit.py).
        self.damaged_arrivals = 0
        self.sync_seconds = Histogram("dfs_chunkserver_sync_seconds",
                                      "How long a replica's sync (or a group of small ones "
                                      "run together) took.")

    @property
    def handlers(self) -> dict:
        return {name: getattr(self, name) for name in ops.CHUNK}

    async def aclose(self) -> None:
        await self.peers.aclose()
        while self._open:
            self._open.popitem()[1].close()

    # -- plumbing ---------------------------------------------------------

    @asynccontextmanager
    async def _locked(self, chunk: int, shared: bool = False):
        lock = self._locks.get(chunk)
        if lock is None:
            lock = self._locks[chunk] = ChunkLock()
        held = False
        try:
            await lock.acquire(exclusive=not shared)
            held = True
            yield
        finally:
            if held:
                lock.release(exclusive=not shared)
            if not lock.busy and self._locks.get(chunk) is lock:
                del self._locks[chunk]

    async def _io(self, chunk: int, fn, *args, inline: bool = False):
        try:
            if inline:
                return fn(*args)
            return await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            code = exc.errno or errno.EIO
            if code != errno.ENOENT:
                log.warning("disk operation failed", chunk=chunk, op=fn.__name__,
                            error=exc.strerror or str(exc))
            raise DfsError(code, f"chunk {chunk}: {exc.strerror or exc}") from None
        except HeaderError as exc:
            log.error("replica header unreadable", chunk=chunk, reason=str(exc))
            raise DfsError(errno.EIO, f"chunk {chunk}: {exc}") from None

    async def _replica(self, chunk: int, version: int | None = None) -> ChunkFile:
        """The open replica (caller holds the chunk's lock); ENOENT if there is
        none, ESTALE if `version` is given and differs."""
        if chunk not in self.versions:
            raise DfsError(errno.ENOENT, f"chunk {chunk}: no replica here")
        handle = self._open.get(chunk)
        if handle is None:
            opened = await self._io(chunk, self.store.open, chunk)
            # Another holder of the shared lock may have opened it meanwhile.
            handle = self._open.get(chunk)
            if handle is None:
                handle = self._open[chunk] = opened
                self._evict()
            else:
                opened.close()
        else:
            self._open.move_to_end(chunk)
        self.last_used[chunk] = trio.current_time()
        if version is not None and handle.version != version:
            raise DfsError(errno.ESTALE, f"chunk {chunk}: replica is at version "
                                         f"{handle.version}, not {version}")
        return handle

    def _evict(self) -> None:
        for chunk in list(self._open):
            if len(self._open) <= MAX_OPEN:
                break
            if chunk not in self._locks:
                self._open.pop(chunk).close()

    def _forget(self, chunk: int) -> None:
        """Close the replica before it is removed or replaced."""
        handle = self._open.pop(chunk, None)
        if handle is not None:
            handle.close()
        self._bad_seen = {seen for seen in self._bad_seen if seen[0] != chunk}

    def _have(self, chunk: int, version: int) -> bool:
        """Whether a sound replica of `chunk` at `version` is here already, so
        a copy of it is needless; ESTALE if a newer one is."""
        current = self.versions.get(chunk)
        if current is not None and current > version:
            raise DfsError(errno.ESTALE, f"chunk {chunk}: replica here is at version "
                                         f"{current}, newer than {version}")
        return current == version and (chunk, current) not in self._bad_seen

    async def _sync(self, handle: ChunkFile) -> None:
        if not self.syncs.inline(handle.unsynced, time.monotonic()):
            started = time.monotonic()
            await self._io(handle.chunk, handle.sync)
            self.sync_seconds.observe(time.monotonic() - started)
            return
        group = self._sync_group
        if group is not None:
            group.add(handle)
            await group.done.wait()
        else:
            group = self._sync_group = _SyncGroup()
            group.add(handle)
            # Other requests that may sync, received already, apply their
            # writes and join before the group syncs: their writes then go
            # to the disk together instead of each waiting for the one
            # before. A sync alone (a database's commit) starts at once.
            for _ in range(GATHER_ROUNDS):
                if sum(self.in_hand[op] for op in SYNCING_OPS) <= len(group.handles):
                    break
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._sync_group = None
            started = time.monotonic()
            group.run()
            self._timed(time.monotonic() - started, started, len(group.handles))
        await self._io(handle.chunk, group.outcome, handle, inline=True)

    def _timed(self, seconds: float, started: float, count: int) -> None:
        """Record a group's sync time; say so when the disk turns slow or quick."""
        was_slow = self.syncs.slow
        self.syncs.took(seconds, started, count)
        self.sync_seconds.observe(seconds)
        if self.syncs.slow != was_slow:
            log.info("small syncs go to worker threads: the disk flushes slowly"
                     if self.syncs.slow else "small syncs run on the event loop again",
                     average_ms=round(self.syncs.average * 1000, 2),
                     syncs=self.syncs.synced, groups=self.syncs.groups)

    async def _verified_io(self, handle: ChunkFile, fn, *args, inline: bool = False):
        """Run a replica method that verifies the blocks it touches; a bad block
        is logged, reported to the metaserver and answered with EIO."""
        try:
            return await self._io(handle.chunk, fn, *args, inline=inline)
        except ChecksumError as exc:
            self.checksum_failures += 1
            log.error("checksum mismatch", chunk=handle.chunk, version=handle.version,
                      block=exc.block, op=fn.__name__)
            if (handle.chunk, handle.version) not in self._bad_seen:
                self._bad_seen.add((handle.chunk, handle.version))
                self._bad_send.send_nowait((handle.chunk, handle.version))
            raise DfsError(errno.EIO, f"chunk {handle.chunk}: block {exc.block} failed its "
                                      f"checksum") from None

    # -- operations -------------------------------------------------------

    async def create(self, chunk: int, version: int):
        """An existing replica is moved up to `version` (data kept); one that is
        already newer is left alone and answered with ESTALE, since lowering a
        version could make stale data look current."""
        _check_id("chunk", chunk)
        _check_id("version", version)
        async with self._locked(chunk):
            current = self.versions.get(chunk)
            if current is None:
                self._open[chunk] = await self._io(chunk, self.store.create, chunk, version)
                self._evict()
                log.info("replica created", chunk=chunk, version=version)
            elif current > version:
                raise DfsError(errno.ESTALE, f"chunk {chunk}: replica is already at version "
                                             f"{current}, newer than {version}")
            elif current < version:
                handle = await self._replica(chunk)
                await self._io(chunk, handle.set_version, version)
                log.info("replica version set", chunk=chunk, old=current, version=version)
            self.versions[chunk] = version
        return {}

    async def set_version(self, chunk: int, old: int, new: int):
        _check_id("version", new)
        async with self._locked(chunk):
            handle = await self._replica(chunk)
            if handle.version == new:
                return {}
            if handle.version != old:
                raise DfsError(errno.ESTALE, f"chunk {chunk}: replica is at version "
                                             f"{handle.version}, not {old}")
            await self._io(chunk, handle.set_version, new)
            self.versions[chunk] = new
            log.info("replica version set", chunk=chunk, old=old, version=new)
        return {}

    async def write(self, chunk: int, version: int, offset: int, data: bytes,
                    sync: bool | None, crc: int | None = None):
        return await self._write(chunk, version, [(offset, data, crc)], sync)

    async def write_extents(self, chunk: int, version: int, extents: list, sync: bool | None):
        if len(extents) > ops.MAX_EXTENTS:
            raise DfsError(errno.EINVAL, f"chunk {chunk}: {len(extents)} extents in one "
                                         f"request, the limit is {ops.MAX_EXTENTS}")
        pieces = []
        for extent in extents:
            if not (isinstance(extent, list) and len(extent) in (2, 3)
                    and all(isinstance(n, int) and not isinstance(n, bool)
                            for n in extent[::2])
                    and isinstance(extent[1], bytes)):
                raise DfsError(errno.EINVAL, f"chunk {chunk}: an extent is [offset, data] "
                                             f"or [offset, data, crc32c]")
            pieces.append((extent[0], extent[1], extent[2] if len(extent) == 3 else None))
        return await self._write(chunk, version, pieces, sync)

    async def _write(self, chunk: int, version: int,
                     pieces: list[tuple[int, bytes, int | None]], sync: bool | None):
        """Apply writes in order; all are checked (their data against the
        CRC it came with too) before the first is applied."""
        total = 0
        for offset, data, crc in pieces:
            _check_range(chunk, offset, len(data))
            if offset + len(data) > MAX_CHUNK:
                raise DfsError(errno.EFBIG, f"chunk {chunk}: write past {MAX_CHUNK} bytes")
            try:
                transit.check(data, crc, f"chunk {chunk}: write at {offset}")
            except DfsError:
                self.damaged_arrivals += 1
                log.warning("write refused: its data arrived damaged", chunk=chunk,
                            offset=offset, length=len(data))
                raise
            total += len(data)
        _check_range(chunk, 0, total)
        pieces = [(offset, data) for offset, data, _ in pieces]
        async with self._locked(chunk):
            handle = await self._replica(chunk, version)
            await self._io(chunk, handle.write_pieces, pieces, inline=total <= INLINE_IO)
            self.bytes_written += total
            if sync:
                await self._sync(handle)
        return {}

    async def read(self, chunk: int, version: int, offset: int, length: int):
        _check_range(chunk, offset, length)
        async with self._locked(chunk, shared=True):
            handle = await self._replica(chunk, version)
            data = await self._verified_io(handle, handle.read, offset, length,
                                           inline=length <= INLINE_IO)
            crcs = transit.piece_crcs(data, offset, handle.kept_crc)
        self.bytes_read += len(data)
        return {"data": data, "crcs": crcs}

    async def sync(self, chunk: int, version: int):
        async with self._locked(chunk, shared=True):
            handle = await self._replica(chunk, version)
            await self._sync(handle)
        return {}

    async def truncate(self, chunk: int, version: int, length: int):
        if not 0 <= length <= MAX_CHUNK:
            raise DfsError(errno.EINVAL, f"chunk {chunk}: length {length} is out of range")
        async with self._locked(chunk):
            handle = await self._replica(chunk, version)
            await self._verified_io(handle, handle.truncate, length)
        return {}

    async def delete(self, chunk: int):
        async with self._locked(chunk):
            self._forget(chunk)
            if await self._io(chunk, self.store.delete, chunk):
                log.info("replica deleted", chunk=chunk, version=self.versions.get(chunk))
            self.versions.pop(chunk, None)
            self.last_used.pop(chunk, None)
        return {}

    async def chunk_info(self, chunk: int):
        """A replica known to fail its checksums answers EIO, so nobody counts
        it as a good copy (the metaserver confirms copies this way)."""
        async with self._locked(chunk):
            if chunk in self.versions and not await self._io(chunk, self.store.exists, chunk):
                # Removed behind our back (an operator, a failing disk): an
                # open handle would still answer, so look at the disk.
                log.error("replica vanished from disk", chunk=chunk)
                self._forget(chunk)
                self.versions.pop(chunk, None)
            handle = await self._replica(chunk)
            if (chunk, handle.version) in self._bad_seen:
                raise DfsError(errno.EIO, f"chunk {chunk}: replica failed its checksums")
            return {"length": handle.size, "version": handle.version}

    async def list_chunks(self):
        return {"chunks": [[chunk, version] for chunk, version in self.versions.items()]}

    async def verify(self, chunk: int):
        """Read every block of the replica against its CRC (fsck); EIO, logged
        and reported like a failed read, if one does not match."""
        offset = 0
        while True:
            length = await self.scrub(chunk, offset, MAX_DATA)
            if length is None:
                raise DfsError(errno.ENOENT, f"chunk {chunk}: no replica here")
            offset += MAX_DATA
            if offset >= length:
                return await self.chunk_info(chunk)

    async def copy(self, chunk: int, version: int, source: int, source_version: int,
                   length: int | None):
        """Make `chunk` at `version` from this server's replica of `source` at
        `source_version` (the copy-on-write of a chunk that snapshots share):
        its first `length` bytes, all of it when `length` is None. The copy is
        never longer than the source: past the source's end it would hold
        only zeros, which reads past its own end return anyway.

        A sound replica already here at `version` is kept (the call is
        idempotent), a newer one refuses (ESTALE), an older or corrupt one is
        replaced. A source block that fails its checksum fails the copy with
        EIO and is reported like any failed read; nothing is installed.
        """
        for name, value in (("chunk", chunk), ("version", version), ("source", source),
                            ("source_version", source_version)):
            _check_id(name, value)
        if chunk == source:
            raise DfsError(errno.EINVAL, f"chunk {chunk}: cannot be copied onto itself")
        if length is not None and not 0 <= length <= MAX_CHUNK:
            raise DfsError(errno.EINVAL, f"chunk {chunk}: length {length} is out of range")
        if self._have(chunk, version):
            return await self.chunk_info(chunk)
        builder = await self._io(chunk, self.store.builder, chunk)
        try:
            # The source is held for the whole read, so the copy is one point
            # in time of it, and let go before the chunk's own lock is taken:
            # never holding both, the copy cannot deadlock with anything that
            # takes them in the other order (a copy the other way).
            async with self._locked(source, shared=True):
                handle = await self._replica(source, source_version)
                end = handle.size if length is None else min(length, handle.size)
                for offset in range(0, end, MAX_DATA):
                    data = await self._verified_io(handle, handle.read, offset,
                                                   min(MAX_DATA, end - offset))
                    await self._io(chunk, builder.put, offset, data)
            await self._io(chunk, builder.complete, version)
            async with self._locked(chunk):
                # A retry of this request, run alongside it, may have installed
                # its copy first and the chunk been written since: keep that.
                kept = self._have(chunk, version)
                if not kept:
                    self._forget(chunk)
                    await self._io(chunk, builder.install)
                    self.versions[chunk] = version
        finally:
            await self._io(chunk, builder.abort)
        if kept:
            return await self.chunk_info(chunk)
        log.info("replica copied locally", chunk=chunk, source=source, version=version,
                 length=builder.length)
        return {"length": builder.length, "version": version}

    async def replicate(self, chunk: int, version: int, source: str):
        """Copy the replica at `version` from `source`; a sound replica already
        here at that version is kept (the call is idempotent), a newer one
        refuses, a corrupt one is replaced."""
        _check_id("chunk", chunk)
        try:
            parse_addr(source)
        except ValueError as exc:
            raise DfsError(errno.EINVAL, str(exc)) from None
        if self._have(chunk, version):
            return await self.chunk_info(chunk)
        peer = self.peers.get(source)
        info = await peer.call("chunk_info", timeout=PEER_TIMEOUT, chunk=chunk)
        if info["version"] != version:
            raise DfsError(errno.ESTALE, f"chunk {chunk}: source {source} has version "
                                         f"{info['version']}, not {version}")
        builder = await self._io(chunk, self.store.builder, chunk)
        try:
            offset = 0
            while offset < info["length"]:
                length = min(MAX_DATA, info["length"] - offset)
                data = await self._fetch(peer, chunk, version, offset, length)
                if len(data) != length:
                    raise DfsError(errno.EIO, f"chunk {chunk}: source {source} sent "
                                              f"{len(data)} bytes, not {length}")
                await self._io(chunk, builder.put, offset, data)
                offset += length
            await self._io(chunk, builder.complete, version)
            async with self._locked(chunk):
                self._forget(chunk)
                await self._io(chunk, builder.install)
                self.versions[chunk] = version
        finally:
            await self._io(chunk, builder.abort)
        log.info("replica copied", chunk=chunk, version=version, source=source,
                 length=builder.length)
        return {"length": builder.length, "version": version}

    async def _fetch(self, peer, chunk: int, version: int, offset: int, length: int) -> bytes:
        """Read a piece of a replica from a peer, again if it arrives damaged."""
        def damaged(attempt: int) -> None:
            self.damaged_arrivals += 1
            log.warning("replica piece arrived damaged", chunk=chunk, offset=offset,
                        attempt=attempt + 1)

        piece = await transit.fetch(
            lambda: peer.call("read", timeout=PEER_TIMEOUT, chunk=chunk, version=version,
                              offset=offset, length=length),
            lambda reply: transit.check_pieces(reply["data"], offset, reply.get("crcs"),
                                               f"chunk {chunk} from a peer"),
            damaged)
        return piece["data"]

    async def scrub(self, chunk: int, offset: int, length: int) -> int | None:
        """Verify part of a replica; return its length, or None if it is gone.
        A bad block is logged and reported like any failed read (EIO)."""
        async with self._locked(chunk, shared=True):
            if chunk not in self.versions:
                return None
            # A replica nobody has open is read through a handle of its own,
            # closed after: the cache of open replicas and their coldness are
            # the clients', a pass over the store would only push theirs out.
            handle = self._open.get(chunk)
            own = handle is None
            if own:
                handle = await self._io(chunk, self.store.open, chunk)
            try:
                await self._verified_io(handle, handle.read, offset, length)
                return handle.size
            finally:
                if own:
                    handle.close()
