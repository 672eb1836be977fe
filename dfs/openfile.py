"""The client's state for one open inode: buffered writes, read-ahead, chunk
placements and the size this mount has written.

Writes are gathered per chunk into batches of up to MAX_DATA bytes and
MAX_EXTENTS extents (contiguous writes join one extent; scattered small writes,
such as a database's page writes between two fsyncs, travel together in one
request) and sent to every replica in the background, many batches in flight;
a batch waits only for earlier batches that overlap it, so the order of
overlapping writes is kept. Errors surface at the next write, flush or fsync.
`flush` (close) and `fsync` return once every replica has synced and the
metaserver has recorded the new size and mtime. An fdatasync that does not
grow the file need not record the mtime (POSIX), and a database calls it
hundreds of times a second: once the metaserver knows the file is written
quietly (other mounts then do not trust their caches of it), such a sync
leaves the mtime to be recorded in the background, within MTIME_LAG.

A reader is sequential once SEQUENTIAL_READS reads in a row each began where
the one before ended, and stays so while its reads fall in what read-ahead
holds for it: its reads go by 1 MiB segments, READ_AHEAD_SEGMENTS of them read
ahead. Every other read takes the 64 KiB blocks around it, fetched or out of
the cache of blocks and segments, and gives the kernel's page cache the rest
of them (pagefeed.py).

Memory, for the whole mount however many files it writes: at most
MAX_INFLIGHT_BATCHES batches of MAX_DATA bytes (64 MiB) being sent, plus at
most MAX_UNSENT_BYTES waiting in open batches, plus the read cache
(READ_CACHE_BYTES unless the mount is given another size).
"""

import errno
import time
from dataclasses import dataclass, field

import trio

from . import logs
from .chunkio import REPLICA_ERRORS, ChunkIO, Placement, ReplicaFailure
from .errors import DfsError
from .framing import MAX_DATA, Pieces
from .ops import MAX_EXTENTS
from .pagefeed import PageFeed, page_ceil, page_floor
from .readcache import ReadCache
from .records import Attr
from .session import MetaLink

log = logs.get_logger("client")

SEGMENT = 1024 * 1024
READ_AHEAD_SEGMENTS = 8
# Reads in a row, each beginning where the one before ended, that make a reader
# sequential. A random reader's read now and then begins where its last one
# ended; read-ahead for it would push that many segments of its blocks out.
SEQUENTIAL_READS = 2
# Read-ahead of all files of a mount together: four sequential readers, each
# with room for its read-ahead window twice over. The rest of the read cache
# holds random reads' blocks, which the kernel drops with the file's pages
# (fadvise, memory pressure) and asks for again.
READ_AHEAD_CACHE_BYTES = 4 * 2 * READ_AHEAD_SEGMENTS * SEGMENT
# The memory MooseFS's client gives its read buffers by default, so a mount
# holds the same working set of random reads as the client users compare it to.
READ_CACHE_BYTES = 256 * SEGMENT
MIN_READ_CACHE_BYTES = 2 * READ_AHEAD_SEGMENTS * SEGMENT
MAX_INFLIGHT_BATCHES = 16
# Beyond this many bytes waiting in the open batches of all files, a write
# sends its own batch at once: many files written at a time hold no more.
MAX_UNSENT_BYTES = 64 * 1024 * 1024
# A cached write lease is renewed well before the metaserver lets it lapse.
LEASE_REUSE_SECONDS = 15.0
LEASE_MARGIN_SECONDS = 2.0
WRITE_RETRY_SECONDS = 60.0
# Why a write failed, told to the application as it is: out of space or
# quota, or fenced (the folder was handed to another mount). Anything else
# is EIO.
TOLD_AS_IS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
READ_RETRIES = 3
# How late the mtime of quietly synced writes may reach the metaserver.
MTIME_LAG = 1.0
# Without fallocate (pyfuse3 has no handler for it), glibc's posix_fallocate
# writes one zero byte every 4 KiB past the end, 256 writes per MiB, as MariaDB
# does whenever a tablespace grows. Past the end reads as zeros already, so a
# small zero write there only moves the end; the replicas see none of it.
ZEROS_PAST_END = 512


@dataclass(slots=True, eq=False)
class _Batch:
    """Writes to one chunk not sent yet, in the order they were made:
    (file offset, data) extents, contiguous writes joined. The data stays in
    the buffers the writes came in (it goes to the replicas uncopied)."""

    extents: list = field(default_factory=list)
    size: int = 0
    start: int = -1
    end: int = -1

    def add(self, pos: int, piece: memoryview) -> None:
        if not isinstance(piece.obj, bytes):
            piece = bytes(piece)  # a buffer its owner may change before the send
        last = self.extents[-1] if self.extents else None
        if last is not None and last[0] + len(last[1]) == pos:
            last[1].append(piece)
        else:
            self.extents.append((pos, Pieces([piece])))
        self.size += len(piece)
        self.start = pos if self.start < 0 else min(self.start, pos)
        self.end = max(self.end, pos + len(piece))

    def takes(self, pos: int, length: int) -> bool:
        """Whether a write of `length` bytes at `pos` may join this batch."""
        if self.size + length > MAX_DATA:
            return False
        last = self.extents[-1]
        return last[0] + len(last[1]) == pos or len(self.extents) < MAX_EXTENTS


class MountWrites:
    """What all files of a mount share while writing: the batches being sent
    and the bytes waiting in open batches."""

    def __init__(self):
        self.in_flight = trio.CapacityLimiter(MAX_INFLIGHT_BATCHES)
        self.unsent = 0


@dataclass(slots=True, eq=False)
class _InFlight:
    index: int
    start: int
    end: int
    done: trio.Event
    # Order of launch within the file: a sync covers only batches launched before it.
    seq: int


class OpenFile:
    def __init__(self, ino: int, attr: Attr, meta: MetaLink, chunkio: ChunkIO,
                 nursery: trio.Nursery, writes: MountWrites, cache: ReadCache,
                 feed: PageFeed):
        self.ino = ino
        self.meta = meta
        self.chunkio = chunkio
        self.nursery = nursery
        self.writes = writes
        self.cache = cache
        self.feed = feed
        self.chunk_size = meta.chunk_size
        self.segment = min(SEGMENT, self.chunk_size)
        self.block = meta.block_size
        self.handles = 0
        # Handles of this mount that may write the file.
        self.writers = 0
        self.size = attr.size
        self.seen = (attr.mtime, attr.size)
        self.dirty = False
        self.mtime = attr.mtime
        # (size, mtime) synced quietly and not yet recorded on the metaserver.
        self.unrecorded: tuple[int, int] | None = None
        # The latest mtime this mount sent, so that two flushes answered out of
        # order cannot move the file's mtime back.
        self._sent_mtime = 0
        self._commit_lock = trio.Lock()
        self.granted_end = 0
        self._placements: dict[int, Placement] = {}
        self._leases: dict[int, tuple[Placement, float]] = {}
        self._lease_locks: dict[int, trio.Lock] = {}
        self._batches: dict[int, _Batch] = {}
        self._inflight: list[_InFlight] = []
        self._error: DfsError | None = None
        # Chunks written but not synced: the placement, and the latest launch written.
        self._to_sync: dict[int, tuple[Placement, int]] = {}
        self._launched = 0
        self._fetching: dict[int, trio.Event] = {}
        self._last_read_end = -1
        # Reads in a row so far that each began where the one before ended.
        self._in_sequence = 0
        self._generation = 0
        # Moved by every open: what was fetched before it stays out of the
        # kernel's page cache (see pagefeed.py; a truncation moves _generation).
        self._page_cache_epoch = 0

    # ---- state shared with the metaserver -------------------------------

    def refresh(self, attr: Attr, changing: bool = False) -> bool:
        """Take the metaserver's view at open; True if the file is unchanged
        since this mount last saw it and no other mount may be writing it
        quietly (so the page cache may be kept)."""
        unchanged = not changing and (attr.mtime, attr.size) == self.seen
        if not unchanged:
            self.forget_data()
        if not self.dirty and not self._inflight:
            self.size = attr.size
        self.seen = (attr.mtime, attr.size)
        return unchanged

    def forget_data(self) -> None:
        """Drop cached placements and read-ahead (after a truncate or a change elsewhere)."""
        self._placements.clear()
        self._leases.clear()
        self.cache.drop_file(self.ino)
        self._generation += 1

    async def settle_page_cache(self) -> None:
        """Called before an open is answered: data fetched before it stays
        out of the kernel's page cache (see pagefeed.py)."""
        self._page_cache_epoch += 1
        await self.feed.settle(self.ino)

    @property
    def busy(self) -> bool:
        return bool(self._batches or self._inflight)

    @property
    def flushed(self) -> bool:
        """Nothing written is left to send, sync or record, and no error to
        report: a flush would do nothing (every close of a file only read)."""
        return not (self._batches or self._inflight or self._to_sync or self.dirty
                    or self._error is not None or self.ino in self.meta.quiet)

    # ---- writes ---------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> int:
        if self._error is not None:
            self._raise_error()
        end = offset + len(data)
        if end > self.granted_end and end > self.size:
            reply = await self.meta.call("reserve", ino=self.ino, session=self.meta.session,
                                         end=end)
            self.granted_end = reply["granted"]
        self._drop_cached(offset, end)
        if offset > self.size > 0:
            # The cached piece that ends at the old end is short: it would hide the hole.
            self._drop_cached(self.size - 1, self.size)
        if not (offset >= self.size and len(data) <= ZEROS_PAST_END
                and data.count(0) == len(data)):
            view = memoryview(data)
            pos = offset
            while view:
                index, within = divmod(pos, self.chunk_size)
                n = min(len(view), self.chunk_size - within)
                await self._add(index, pos, view[:n])
                pos += n
                view = view[n:]
        self.size = max(self.size, end)
        self.dirty = True
        self.mtime = time.time_ns()
        return len(data)

    async def _add(self, index: int, pos: int, piece: memoryview) -> None:
        batch = self._batches.get(index)
        if batch is not None and not batch.takes(pos, len(piece)):
            await self._launch(index)
            batch = None
        if batch is None:
            batch = self._batches[index] = _Batch()
        batch.add(pos, piece)
        self.writes.unsent += len(piece)
        if batch.size >= MAX_DATA or self.writes.unsent > MAX_UNSENT_BYTES:
            await self._launch(index)

    async def _launch(self, index: int, sync: bool = False) -> None:
        """Send the chunk's open batch. A batch that also syncs the replica
        waits for every earlier batch to the chunk, so it is the last to land.

        The batch is in flight from the moment it leaves `_batches`, also while
        it waits for room in the mount's pipeline: a read or a drain meanwhile
        must wait for it, and a later overlapping batch must land after it."""
        batch = self._batches.pop(index)
        self.writes.unsent -= batch.size
        earlier = [f for f in self._inflight if f.index == index
                   and (sync or (f.start < batch.end and batch.start < f.end))]
        self._launched += 1
        flight = _InFlight(index, batch.start, batch.end, trio.Event(), self._launched)
        self._inflight.append(flight)
        try:
            await self.writes.in_flight.acquire_on_behalf_of(batch)
        except BaseException:
            # Cancelled before it was sent (the mount is stopping): the batch is lost.
            if self._error is None:
                self._error = DfsError(errno.EIO, "a write was cancelled before it was sent")
            self._land(flight, batch)
            raise
        self.nursery.start_soon(self._send, batch, flight, earlier, sync)

    def _land(self, flight: _InFlight, batch: _Batch) -> None:
        self._inflight.remove(flight)
        # A fetch that began after the write but before it reached the
        # replicas read what was there before it: drop that too. Extent by
        # extent: the span of a database's scattered page writes is most of
        # a chunk, a thousand cached pieces to look up.
        for pos, data in batch.extents:
            self._drop_cached(pos, pos + len(data))
        flight.done.set()

    async def _send(self, batch: _Batch, flight: _InFlight, earlier: list[_InFlight],
                    sync: bool) -> None:
        try:
            for other in earlier:
                await other.done.wait()
            base = flight.index * self.chunk_size
            extents = [(pos - base, data) for pos, data in batch.extents]
            placement = await self._on_live_replicas(
                flight.index, None,
                lambda placement: self.chunkio.write(placement, extents, sync))
            unsynced = self._to_sync.get(flight.index)
            if sync:
                # A batch launched after this one (a write made during the
                # flush) may have landed after the sync: it stays to be synced.
                if unsynced is not None and unsynced[1] < flight.seq:
                    del self._to_sync[flight.index]
            elif unsynced is None or unsynced[1] < flight.seq:
                self._to_sync[flight.index] = (placement, flight.seq)
        except DfsError as exc:
            log.error("write failed", ino=self.ino, chunk_index=flight.index, error=str(exc))
            if self._error is None:
                self._error = exc
        except Exception:
            # A bug must fail this file's writes, not take the whole mount down.
            log.error("write failed", exc_info=True, ino=self.ino, chunk_index=flight.index)
            if self._error is None:
                self._error = DfsError(errno.EIO, "internal error in the client")
        finally:
            self._land(flight, batch)
            self.writes.in_flight.release_on_behalf_of(batch)

    @staticmethod
    def _failed_replicas(exc: DfsError, placement: Placement) -> tuple[str, ...]:
        """The replicas to report to the metaserver after a failed write or
        sync, or raise when trying again cannot help. A replica that died,
        fell behind or ran out of room is dropped and the others carry on;
        ENOSPC on every replica is the application's ENOSPC."""
        if not isinstance(exc, ReplicaFailure):
            if exc.errno not in REPLICA_ERRORS:
                raise exc
            return ()
        codes = {e.errno for e in exc.failed.values()}
        if codes == {errno.ENOSPC} and len(exc.failed) == len(placement.servers):
            raise exc
        if not codes <= REPLICA_ERRORS | {errno.ENOSPC}:
            raise exc
        # ESTALE only says the version moved on: the replica itself is fine.
        return tuple(addr for addr, e in exc.failed.items() if e.errno != errno.ESTALE)

    async def _lease(self, index: int, failed: tuple[str, ...] = ()) -> Placement:
        """A write placement; `failed` replicas are reported so the metaserver
        drops them and moves the survivors to a new version."""
        lock = self._lease_locks.setdefault(index, trio.Lock())
        async with lock:
            cached = self._leases.get(index)
            if (cached is not None and not failed
                    and trio.current_time() - cached[1] < LEASE_REUSE_SECONDS
                    and cached[0].lease_until - time.time() > LEASE_MARGIN_SECONDS):
                return cached[0]
            reply = await self.meta.call("chunk_write", ino=self.ino, index=index,
                                         session=self.meta.session,
                                         failed=list(failed) or None)
            placement = Placement.from_wire(reply)
            self._leases[index] = (placement, trio.current_time())
            self._placements[index] = placement
            return placement

    def _raise_error(self):
        exc, self._error = self._error, None
        raise DfsError(exc.errno if exc.errno in TOLD_AS_IS else errno.EIO,
                       f"writing inode {self.ino} failed: {exc.message}")

    async def drain(self) -> None:
        """Send every buffered batch and wait for every batch launched so far;
        raise a pending error. Batches launched meanwhile are not waited for:
        they were written after the drain began, and a steady writer would
        otherwise keep it waiting for ever."""
        for index in list(self._batches):
            await self._launch(index)
        for flight in list(self._inflight):
            await flight.done.wait()
        if self._error is not None:
            self._raise_error()

    async def flush(self, datasync: bool = False) -> Attr | None:
        """Make everything written so far durable on every replica and record
        size and mtime on the metaserver (for an fdatasync that does not grow
        the file, the mtime only once the metaserver knows the file is written
        quietly). Returns the new attributes, if any.

        The last batch to each chunk carries the sync, saving a round trip.
        When the file did not grow, the metaserver records the new mtime
        while the replicas sync: no size then runs ahead of its data."""
        # What this flush makes durable; writes made while it runs wait for the next.
        size, mtime = self.size, self.mtime
        for index in list(self._batches):
            await self._launch(index, sync=True)
        grew = size > self.seen[1]
        quiet = self.ino in self.meta.quiet
        quietly = datasync and not grew and quiet
        # Other than an fdatasync, a flush also ends quiet writing.
        record = (self.dirty or quiet and not datasync) and not quietly
        committed: list[Attr] = []
        try:
            async with trio.open_nursery() as nursery:
                if record and not grew:
                    nursery.start_soon(self._commit, size, mtime, committed, datasync)
                await self.drain()
                unsynced, self._to_sync = self._to_sync, {}
                for index, (placement, _) in unsynced.items():
                    nursery.start_soon(self._sync_chunk, index, placement)
        except* DfsError as group:
            exc = group.exceptions[0]
            raise DfsError(exc.errno if exc.errno in TOLD_AS_IS else errno.EIO,
                           f"sync of inode {self.ino} failed: {exc}") from None
        if record and grew:
            await self._commit(size, mtime, committed, datasync)
        if quietly and self.dirty:
            self.unrecorded = (size, mtime)
        return committed[0] if committed else None

    async def _commit(self, size: int, mtime: int, committed: list[Attr],
                      quiet: bool) -> None:
        async with self._commit_lock:
            await self._record(size, mtime, committed, quiet)

    async def record_quiet_sync(self) -> None:
        """Record on the metaserver the mtime of writes synced quietly."""
        async with self._commit_lock:
            if self.unrecorded is None:
                return
            try:
                await self._record(*self.unrecorded, [], quiet=True)
            except DfsError as exc:
                # The next flush or fsync records it, or reports the failure.
                log.warning("recording the mtime failed", ino=self.ino, error=str(exc))

    async def _record(self, size: int, mtime: int, committed: list[Attr],
                      quiet: bool) -> None:
        """Send a commit (the caller holds the commit lock)."""
        sent = self._sent_mtime = max(mtime, self._sent_mtime)
        try:
            reply = await self.meta.call("commit", ino=self.ino, session=self.meta.session,
                                         size=size, mtime=sent, quiet=quiet or None)
        except DfsError as exc:
            if exc.errno == errno.EROFS:
                # Fenced: this mount can never record it; say so once, not at every close.
                self.dirty = False
                self.unrecorded = None
            raise
        attr = Attr.from_wire(reply)
        # The metaserver ignores quiet from a session that no longer holds the file.
        if quiet and self.ino in self.meta.open_inodes:
            self.meta.quiet.add(self.ino)
        else:
            self.meta.quiet.discard(self.ino)
        # Writes made since the flush began still need committing.
        if (self.size, self.mtime) == (size, mtime):
            self.dirty = False
        if self.unrecorded is not None and self.unrecorded[1] <= mtime:
            self.unrecorded = None
        self.seen = (attr.mtime, attr.size)
        committed.append(attr)

    async def _sync_chunk(self, index: int, placement: Placement) -> None:
        """Sync one chunk on every replica. If a replica fails, the metaserver
        drops it and moves the survivors on; they hold every byte written to
        the chunk so far (each write reached all replicas of its placement),
        so syncing them is enough."""
        await self._on_live_replicas(index, placement, self.chunkio.sync)

    async def _on_live_replicas(self, index: int, placement: Placement | None,
                                action) -> Placement:
        """Run `action(placement)` for chunk `index` until every replica of a
        placement has done it; replicas that fail are reported and a fresh
        lease names the survivors. Returns the placement that succeeded."""
        deadline = trio.current_time() + WRITE_RETRY_SECONDS
        delay = 0.1
        failed = ()
        while True:
            if placement is None:
                placement = await self._lease(index, failed)
            try:
                await action(placement)
                return placement
            except DfsError as exc:
                failed = self._failed_replicas(exc, placement)
                if trio.current_time() > deadline:
                    raise
            self._leases.pop(index, None)
            placement = None
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def truncated(self, attr: Attr) -> None:
        self.forget_data()
        self.size = attr.size
        self.granted_end = 0
        self.seen = (attr.mtime, attr.size)

    # ---- reads ----------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        if self.busy:
            await self.drain()
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        continues = offset == self._last_read_end
        # The kernel sends a read someone waits for ahead of its own read-ahead
        # still queued, so a sequential reader's reads also come out of order,
        # within what read-ahead holds for it.
        in_stream = continues or (
            self._in_sequence >= SEQUENTIAL_READS and self._read_ahead_holds(offset, end))
        self._in_sequence = self._in_sequence + 1 if in_stream else 0
        self._last_read_end = end
        if not continues or self._in_sequence < SEQUENTIAL_READS:
            return await self._read_blocks(offset, end)
        data = await self._segments(offset, end)
        self._read_ahead((end - 1) // self.segment + 1)
        return data

    def _read_ahead_holds(self, start: int, end: int) -> bool:
        """Whether read-ahead holds, or is fetching, every segment of [start, end)."""
        return all(s in self._fetching or self.cache.has(self.ino, self.segment, s)
                   for s in range(start // self.segment, (end - 1) // self.segment + 1))

    async def _read_blocks(self, offset: int, end: int) -> bytes:
        """A read out of sequence: the whole blocks around it are fetched (the chunk
        server reads and verifies whole blocks anyway), kept, and given to the
        kernel's page cache, so the reads that follow nearby need no round trip.
        Blocks that read-ahead holds or is fetching are taken from there, and
        given to the kernel too: each later read in them would otherwise reach
        the mount."""
        unit = self.block
        first, last = offset // unit, (end - 1) // unit
        start, stop = first * unit, min((last + 1) * unit, self.size)
        generation, epoch = self._generation, self._page_cache_epoch
        if all(self.cache.has(self.ino, unit, i) for i in range(first, last + 1)):
            data = b"".join(self.cache.get(self.ino, unit, i) for i in range(first, last + 1))
        elif self._read_ahead_holds(start, stop):
            data = await self._segments(start, stop)
        else:
            data = await self._read_range(start, stop)
            if generation != self._generation:
                return data[offset - start:end - start]
            for i in range(first, last + 1):
                self.cache.put(self.ino, unit, i, data[(i - first) * unit:(i - first + 1) * unit])
        self._feed_page_cache(start, data, offset, end, (generation, epoch))
        return data[offset - start:end - start]

    async def _segments(self, start: int, end: int) -> bytes:
        """Bytes [start, end) out of read-ahead's segments, fetching the missing ones."""
        unit = self.segment
        parts = []
        for s in range(start // unit, (end - 1) // unit + 1):
            data = await self._segment(s)
            base = s * unit
            parts.append(data[max(start - base, 0):end - base])
        return b"".join(parts)

    def _feed_page_cache(self, start: int, data: bytes, offset: int, end: int,
                         fetched: tuple[int, int]) -> None:
        """Offer the kernel the pages of `data` (read from `start`) around
        the ones it asked for, [offset, end)."""
        if self.writers:
            return
        view = memoryview(data)
        head, tail = page_floor(offset) - start, page_ceil(end) - start
        pieces = [(start, view[:head])] if head > 0 else []
        if tail < len(data):
            pieces.append((start + tail, view[tail:]))

        def current() -> bool:
            return (fetched == (self._generation, self._page_cache_epoch)
                    and not self.writers and start + len(data) <= self.size)
        self.feed.offer(self.ino, pieces, current)

    async def _segment(self, s: int) -> bytes:
        while True:
            data = self.cache.get(self.ino, self.segment, s)
            if data is not None:
                return data
            pending = self._fetching.get(s)
            if pending is None:
                return await self._fetch_segment(s, self._begin_fetch(s))
            # A read-ahead is under way: use it, or fetch again if it failed
            # or was evicted already.
            await pending.wait()

    def _begin_fetch(self, s: int) -> trio.Event:
        done = self._fetching[s] = trio.Event()
        return done

    async def _fetch_segment(self, s: int, done: trio.Event) -> bytes:
        generation = self._generation
        try:
            start = s * self.segment
            data = await self._read_range(start, min(start + self.segment, self.size))
            if generation == self._generation:
                self.cache.put(self.ino, self.segment, s, data, ahead=True)
            return data
        finally:
            if self._fetching.get(s) is done:
                del self._fetching[s]
            done.set()

    def _read_ahead(self, s: int) -> None:
        for ahead in range(s, s + READ_AHEAD_SEGMENTS):
            if ahead * self.segment >= self.size:
                break
            if not self.cache.has(self.ino, self.segment, ahead) and ahead not in self._fetching:
                self.nursery.start_soon(self._prefetch, ahead, self._begin_fetch(ahead))

    async def _prefetch(self, s: int, done: trio.Event) -> None:
        try:
            await self._fetch_segment(s, done)
        except Exception as exc:
            # Read-ahead is a guess; the read that needs the data retries it.
            log.debug("read-ahead failed", ino=self.ino, segment=s, error=str(exc))

    def _drop_cached(self, start: int, end: int) -> None:
        """A write makes cached reads of its range stale, and reads under way too."""
        self.cache.drop(self.ino, self.segment, start, end)
        self.cache.drop(self.ino, self.block, start, end)
        self._generation += 1

    async def _read_range(self, start: int, end: int) -> bytes:
        parts = []
        pos = start
        while pos < end:
            index, within = divmod(pos, self.chunk_size)
            n = min(end - pos, self.chunk_size - within)
            parts.append(await self._read_chunk(index, within, n))
            pos += n
        return b"".join(parts)

    async def _read_chunk(self, index: int, within: int, length: int) -> bytes:
        attempt = 0
        while True:
            placement = await self._locate(index)
            if placement.is_hole:
                return bytes(length)
            try:
                data = await self.chunkio.read(placement, within, length)
                return data if len(data) == length else data.ljust(length, b"\0")
            except DfsError as exc:
                attempt += 1
                if exc.errno not in REPLICA_ERRORS or attempt == READ_RETRIES:
                    raise DfsError(errno.EIO, f"reading inode {self.ino} chunk {placement.chunk}"
                                              f" failed: {exc.message}") from None
            # A placement may be stale (a replica died or the version moved on).
            self._placements.pop(index, None)
            self._leases.pop(index, None)
            await trio.sleep(0.2 * attempt)

    async def _locate(self, index: int) -> Placement:
        placement = self._placements.get(index)
        if placement is None:
            reply = await self.meta.call("chunk_read", ino=self.ino, index=index)
            placement = self._placements[index] = Placement.from_wire(reply)
        return placement
