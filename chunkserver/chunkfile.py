"""One replica on disk: a sparse data file and a metadata file beside it.

The metadata file holds a header (magic, format, chunk id, version and the
header's own CRC) in its first sector and, from CRC_OFFSET on, one CRC32C per
64 KiB block of data, four bytes little-endian each. A block's CRC covers the
whole block with the bytes past the end of the data file counted as zeros, so
holes and the tail of the last block verify without being stored.

Crash consistency: both files are updated in place, data before the metadata
that describes it, and the header never runs ahead of the data.
- write: space is reserved first (fallocate), so ENOSPC is reported before a
  byte changes; then the data (a block at a time, see `pwrite_by_block`),
  then a pwrite of the touched CRCs. A crash in between leaves new data
  under old CRCs or the reverse, which fails verification (EIO, the replica
  is reported and repaired from another): it never passes off wrong data as
  good. A block written in part gets its CRC patched by the change alone
  (see `patched_crc`), from the bytes the write replaces rather than the
  whole block: a block that was corrupt before the write stays exactly as
  detectably corrupt after it. On a filesystem that overwrites in place,
  pages this opening of the replica has reserved already need no new space
  and are not reserved again: a fallocate also puts the inode in the
  journal, so every fdatasync after a database's overwrites waited for a
  journal commit.
- sync: write out the metadata, then fdatasync the data. On a filesystem that
  overwrites in place (ext4, xfs), once the metadata file's blocks are settled
  (allocated and synced, so overwriting them changes no filesystem metadata),
  the CRCs are only written out and waited for (sync_file_range), and the data
  file's fdatasync flushes the disk's cache, which makes both durable: one
  cache flush per sync instead of two. Anywhere else, or while the metadata
  file has grown since its last fdatasync, it gets its own fdatasync.
- version change: fsync the data, then rewrite the header (one small write
  inside the first sector, with its own CRC so a torn header is detected) and
  fsync it. The version on disk therefore never claims more than the data that
  was written before the change, so a crash cannot leave a replica that says
  "newer version" while holding older data that verifies.
- a new replica (create, replicate, copy) is built under temporary names and
  becomes visible when its metadata file is renamed into place; a data file
  without a metadata file is an orphan and is removed at startup.
The header is updated in place rather than by temp file + rename because a
rename per version change would also need a directory fsync, and a fixed
sector-sized header gives the same all-or-nothing result for less.
"""

import ctypes
import errno
import os
import struct
import sys
from array import array

from crc32c import crc32c

from dfs.ops import BLOCK_SIZE as BLOCK

# The unit in which reserved space is remembered: a page wholly inside a
# reserved range is reserved whatever the filesystem's block size.
PAGE = 4096
# A sanity limit, not the cluster's chunk size, which only the metaserver knows.
MAX_CHUNK = 1 << 30
CRC_OFFSET = 512

MAGIC = b"DFSC"
FORMAT = 1
_HEADER = struct.Struct("<4sIQQ")
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size

ZERO_BLOCK = bytes(BLOCK)
_ZEROS = memoryview(ZERO_BLOCK)
ZERO_CRC = crc32c(ZERO_BLOCK)

# A large write starts its own writeback at once. Otherwise the pages of a
# sequentially written file pile up in the page cache (the kernel's background
# threshold is a tenth of RAM) and the closing fsync waits for all of them;
# started early, the disk works while the rest of the file is still arriving.
WRITEBACK_FROM = 1024 * 1024
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
WRITE_AND_WAIT = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to begin writing the range to disk, without waiting.
    Only a hint: durability still comes from sync, so a failure is ignored."""
    _libc.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def write_out(fd: int) -> None:
    """Write the file's dirty pages to the disk and wait for them, without a
    cache flush and without the file's metadata; OSError as fdatasync would."""
    if _libc.sync_file_range(fd, 0, 0, WRITE_AND_WAIT) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class ChecksumError(Exception):
    """Stored data does not match its block CRC."""

    def __init__(self, block: int):
        super().__init__(block)
        self.block = block


class HeaderError(Exception):
    """A metadata file whose header is missing, torn or not ours."""


def blocks_for(length: int) -> int:
    return (length + BLOCK - 1) // BLOCK


def block_crc(stored) -> int:
    """CRC of a block of which `stored` is the part inside the data file."""
    crc = crc32c(stored)
    if len(stored) < BLOCK:
        crc = crc32c(_ZEROS[:BLOCK - len(stored)], crc)
    return crc


def patched_crc(crc: int, within: int, length: int, old: int, new: int) -> int:
    """The CRC of a block whose CRC was `crc`, once its `length` bytes at
    `within` change from bytes with CRC32C `old` to bytes with CRC32C `new`.

    CRC32C is affine: for messages of one length, XORing two messages XORs
    their CRCs, up to a constant that cancels between the old and the new
    block. The two blocks differ only in the changed bytes, so the CRC moves
    by the difference `old ^ new` carried through the zeros that follow it to
    the end of the block (leading zeros leave it as it is). Continuing a CRC
    over zeros carries it; the XORs with all ones undo the CRC's pre- and
    post-conditioning."""
    trailing = BLOCK - within - length
    return crc ^ crc32c(_ZEROS[:trailing], old ^ new ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def encode_header(chunk: int, version: int) -> bytes:
    header = _HEADER.pack(MAGIC, FORMAT, chunk, version)
    return header + _HEADER_CRC.pack(crc32c(header))


def decode_header(raw: bytes, chunk: int) -> int:
    """Return the version stored in a metadata file's header."""
    if len(raw) < HEADER_SIZE:
        raise HeaderError("header is truncated")
    header, (crc,) = raw[:_HEADER.size], _HEADER_CRC.unpack_from(raw, _HEADER.size)
    if crc32c(header) != crc:
        raise HeaderError("header fails its checksum")
    magic, fmt, stored_chunk, version = _HEADER.unpack(header)
    if magic != MAGIC or fmt != FORMAT:
        raise HeaderError(f"unknown header format {magic!r}/{fmt}")
    if stored_chunk != chunk:
        raise HeaderError(f"header names chunk {stored_chunk}")
    return version


def crcs_to_bytes(crcs: array) -> bytes:
    if sys.byteorder == "big":
        crcs = array("I", crcs)
        crcs.byteswap()
    return crcs.tobytes()


def crcs_from_bytes(raw: bytes) -> array:
    crcs = array("I")
    crcs.frombytes(raw[:len(raw) // 4 * 4])
    if sys.byteorder == "big":
        crcs.byteswap()
    return crcs


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def pwrite_by_block(fd: int, data, offset: int) -> None:
    """Write `data` at `offset` in pieces that never cross a block boundary.

    The kernel sizes the page-cache folio it makes by the write that makes it:
    a 1 MiB pwrite leaves folios of up to megabytes, and every later 4 KiB
    overwrite into one (a database's page after a bulk load, fio after its
    layout) costs the kernel a walk over all the folio's buffers when written
    and again when written back. Written a block at a time, no folio is larger
    than a block."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        step = BLOCK - (offset + pos) % BLOCK
        pwrite_all(fd, view[pos:pos + step], offset + pos)
        pos += step


class ChunkFile:
    """An open replica. Reads and syncs may run side by side in several threads;
    anything else needs the replica to itself (see chunklock.py)."""

    def __init__(self, chunk: int, version: int, data_fd: int, meta_fd: int, size: int,
                 crcs: array, crc_room: int, in_place: bool = False):
        self.chunk = chunk
        self.version = version
        self.data_fd = data_fd
        self.meta_fd = meta_fd
        self.size = size
        self.crcs = crcs
        # CRCs the metadata file has space for. After a crash it may hold
        # fewer than `crcs` (see `open`): room is then reserved on the next write.
        self.crc_room = crc_room
        # The filesystem overwrites blocks in place (see "sync" above).
        self.in_place = in_place
        # The metadata file has not grown since its last fdatasync.
        self._meta_settled = False
        # Bytes changed since the last sync; unknown (None) until the first
        # sync, since the replica may have been written before it was opened.
        self.unsynced: int | None = None
        # Bit n set: page n of the data file is known to have its space
        # reserved (in-place filesystems only; see "write" above).
        self._reserved_pages = 0

    @classmethod
    def open(cls, chunk: int, data_path: str, meta_path: str,
             in_place: bool = False) -> "ChunkFile":
        meta_fd = os.open(meta_path, os.O_RDWR | os.O_CLOEXEC)
        data_fd = -1
        try:
            version = decode_header(os.pread(meta_fd, HEADER_SIZE, 0), chunk)
            data_fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
            # Every read here is of whole blocks the caller sized. Read-ahead
            # would add large page-cache folios around them, and an overwrite
            # of 4 KiB in one then dirties, journals and writes out the whole
            # folio: 8 overwrites and an fdatasync cost twice the CPU.
            os.posix_fadvise(data_fd, 0, 0, os.POSIX_FADV_RANDOM)
            size = os.fstat(data_fd).st_size
            nblocks = blocks_for(size)
            crcs = crcs_from_bytes(os.pread(meta_fd, nblocks * 4, CRC_OFFSET))
            # CRCs never written (a crash right after the data grew) stand for
            # zeros: data that did reach those blocks then fails verification.
            crcs.extend([ZERO_CRC] * (nblocks - len(crcs)))
            crc_room = max(0, (os.fstat(meta_fd).st_size - CRC_OFFSET) // 4)
        except BaseException:
            os.close(meta_fd)
            if data_fd >= 0:
                os.close(data_fd)
            raise
        return cls(chunk, version, data_fd, meta_fd, size, crcs, crc_room, in_place)

    def close(self) -> None:
        os.close(self.data_fd)
        os.close(self.meta_fd)

    def _verified(self, block: int) -> bytes:
        """The stored part of a block, checked against its CRC."""
        start = block * BLOCK
        stored = os.pread(self.data_fd, max(0, min(BLOCK, self.size - start)), start)
        if block_crc(stored) != self.crcs[block]:
            raise ChecksumError(block)
        return stored

    def _replaced_crc(self, start: int, length: int) -> int:
        """CRC32C of the `length` bytes at `start` as the block CRCs count
        them: zeros past the end."""
        stored = self._stored(start, length)
        return crc32c(_ZEROS[:length - len(stored)], crc32c(stored))

    def _stored(self, start: int, length: int):
        """The bytes at [start, start + length) inside the data file, read
        from the page cache if it holds them all; otherwise with the rest of
        their block, in one disk read that brings the block's other pages in
        for the writes that follow nearby (a database's page writes, fio's)."""
        wanted = max(0, min(length, self.size - start))
        if not wanted:
            return b""
        buffer = bytearray(wanted)
        try:
            if os.preadv(self.data_fd, [buffer], start, os.RWF_NOWAIT) == wanted:
                return buffer
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
        first = start - start % BLOCK
        block = os.pread(self.data_fd, min(BLOCK, self.size - first), first)
        return memoryview(block)[start - first:start - first + wanted]

    def _write_crcs(self, first: int, stop: int) -> None:
        pwrite_all(self.meta_fd, crcs_to_bytes(self.crcs[first:stop]), CRC_OFFSET + first * 4)

    def _reserve_crcs(self, nblocks: int) -> None:
        if nblocks > self.crc_room:
            self._meta_settled = False
            os.posix_fallocate(self.meta_fd, CRC_OFFSET + self.crc_room * 4,
                               (nblocks - self.crc_room) * 4)
            self.crc_room = nblocks

    def read(self, offset: int, length: int):
        """Return `length` bytes at `offset`, zeros past the end; ChecksumError
        if any block touched fails its CRC."""
        end = min(offset + length, MAX_CHUNK)
        if end <= offset:
            return b""
        if offset >= self.size:
            return bytes(end - offset)
        first = offset // BLOCK
        span_start = first * BLOCK
        span_end = min(blocks_for(end) * BLOCK, self.size)
        buf = os.pread(self.data_fd, span_end - span_start, span_start)
        view = memoryview(buf)
        for i in range(0, span_end - span_start, BLOCK):
            block = first + i // BLOCK
            if block_crc(view[i:i + BLOCK]) != self.crcs[block]:
                raise ChecksumError(block)
        stored_end = min(end, self.size)
        if end > stored_end:
            return b"".join((view[offset - span_start:stored_end - span_start],
                             bytes(end - stored_end)))
        if offset == span_start and stored_end == span_end:
            return buf
        return view[offset - span_start:stored_end - span_start]

    def kept_crc(self, start: int, length: int) -> int | None:
        """The CRC kept for the bytes at `start`, if they are one whole
        stored block (a read checks it against them), else None."""
        block, within = divmod(start, BLOCK)
        if within or length != BLOCK or (block + 1) * BLOCK > self.size:
            return None
        return self.crcs[block]

    def write(self, offset: int, data) -> None:
        """Write `data` at `offset`, keeping every touched block's CRC right.

        Whole blocks are checksummed straight from `data`; a partly covered
        block has its CRC patched from the bytes the write replaces (a 4 KiB
        write into a cached block reads 4 KiB, not the block), so a corrupt
        block is never blessed with a fresh CRC.
        """
        if not data:
            return
        view = memoryview(data)
        end = offset + len(view)
        first, last = offset // BLOCK, (end - 1) // BLOCK
        new_crcs = array("I")
        for block in range(first, last + 1):
            start, stop = max(offset, block * BLOCK), min(end, (block + 1) * BLOCK)
            piece = view[start - offset:stop - offset]
            if len(piece) == BLOCK:
                new_crcs.append(crc32c(piece))
                continue
            crc = self.crcs[block] if block < len(self.crcs) else ZERO_CRC
            new_crcs.append(patched_crc(crc, start - block * BLOCK, len(piece),
                                        self._replaced_crc(start, len(piece)), crc32c(piece)))

        old_blocks, old_room = len(self.crcs), self.crc_room
        try:
            self._reserve_crcs(last + 1)
            self._reserve(offset, end)
        except OSError:
            # Whatever the failed reservation added lies past the old end and
            # held nothing; cut it off so the replica is exactly as before.
            if os.fstat(self.data_fd).st_size > self.size:
                os.ftruncate(self.data_fd, self.size)
            # CRC space reserved but never written is not settled: the write
            # that first fills it must reserve (and so fully sync) again.
            self.crc_room = old_room
            raise
        pwrite_by_block(self.data_fd, view, offset)
        if len(view) >= WRITEBACK_FROM:
            start_writeback(self.data_fd, offset, len(view))
        if last + 1 > old_blocks:
            self.crcs.extend([ZERO_CRC] * (last + 1 - old_blocks))
        self.crcs[first:last + 1] = new_crcs
        self._write_crcs(min(first, old_blocks), last + 1)
        self.size = max(self.size, end)
        self._changed(len(view))

    def _reserve(self, start: int, end: int) -> None:
        first, stop = start // PAGE, -(-end // PAGE)
        pages = (1 << (stop - first)) - 1
        if self.in_place and (self._reserved_pages >> first) & pages == pages:
            return
        os.posix_fallocate(self.data_fd, start, end - start)
        if self.in_place:
            whole_first, whole_stop = -(-start // PAGE), end // PAGE
            if whole_stop > whole_first:
                self._reserved_pages |= ((1 << (whole_stop - whole_first)) - 1) << whole_first

    def _changed(self, nbytes: int) -> None:
        if self.unsynced is not None:
            self.unsynced += nbytes

    def write_pieces(self, pieces) -> None:
        """Apply (offset, data) writes in order.

        Each block a write covers only in part is read for its CRC (see
        `write`); when those blocks are not in the page cache, asking for all
        of them first lets the disk read them side by side instead of one
        after another, the first write waiting for its block alone."""
        if len(pieces) > 1:
            for block in self._partial_blocks(pieces):
                os.posix_fadvise(self.data_fd, block * BLOCK, BLOCK, os.POSIX_FADV_WILLNEED)
        for offset, data in pieces:
            self.write(offset, data)

    def _partial_blocks(self, pieces) -> set[int]:
        """The stored blocks that the writes in `pieces` cover only in part."""
        stored = blocks_for(self.size)
        blocks = set()
        for offset, data in pieces:
            end = offset + len(data)
            for edge in (offset, end):
                block = edge // BLOCK
                if edge % BLOCK and block < stored:
                    blocks.add(block)
        return blocks

    def truncate(self, length: int) -> None:
        """Cut or extend the replica to `length`; what lies beyond reads as zeros."""
        if length == self.size:
            return
        nblocks = blocks_for(length)
        if length < self.size:
            block, tail = divmod(length, BLOCK)
            tail_crc = block_crc(self._verified(block)[:tail]) if tail else None
            os.ftruncate(self.data_fd, length)
            self._reserved_pages &= (1 << (length // PAGE)) - 1
            del self.crcs[nblocks:]
            if tail_crc is not None:
                self.crcs[block] = tail_crc
                self._write_crcs(block, block + 1)
        else:
            old_blocks = len(self.crcs)
            self._reserve_crcs(nblocks)
            os.ftruncate(self.data_fd, length)
            self.crcs.extend([ZERO_CRC] * (nblocks - old_blocks))
            self._write_crcs(old_blocks, nblocks)
        self.size = length
        self._changed(BLOCK)

    def set_version(self, version: int) -> None:
        os.fsync(self.data_fd)
        pwrite_all(self.meta_fd, encode_header(self.chunk, version), 0)
        os.fsync(self.meta_fd)
        self.version = version

    def start_sync(self) -> None:
        """Start writing out both files without waiting, so that the writes
        of several replicas synced one after another reach the disk
        together; `finish_sync` then waits."""
        start_writeback(self.data_fd, 0, 0)
        if self.in_place and self._meta_settled:
            start_writeback(self.meta_fd, 0, 0)

    def sync(self) -> None:
        # The data file's writes are started first, so that they go to the
        # disk beside the CRCs' rather than after them (either may land
        # first; see "write" above).
        start_writeback(self.data_fd, 0, 0)
        self.finish_sync()

    def finish_sync(self) -> None:
        """The rest of `sync`, once the data file's writes are started."""
        # fdatasync still flushes a size change; timestamps are all it skips,
        # and nothing reads a replica's timestamps. The data file's comes last:
        # its cache flush is what makes written-out CRCs durable.
        if self.in_place and self._meta_settled:
            write_out(self.meta_fd)
        else:
            os.fdatasync(self.meta_fd)
            self._meta_settled = True
        os.fdatasync(self.data_fd)
        self.unsynced = 0
