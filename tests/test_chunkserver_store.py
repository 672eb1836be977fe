"""The on-disk replica format, in process on real files: a model check of
writes, truncates and reads, and what a crash can leave behind."""

import ctypes
import errno
import mmap
import os
import shutil
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkserver.chunkfile import BLOCK, CRC_OFFSET, PAGE, ChecksumError
from chunkserver.chunkstore import ChunkStore, filesystem_type
from faults import tiny_disk

LIMIT = 5 * BLOCK

operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, LIMIT), st.integers(1, 2 * BLOCK + 10)),
        st.tuples(st.just("truncate"), st.integers(0, LIMIT), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=12)


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, seed=st.integers(0, 2**32))
def test_replica_matches_a_byte_model(tmp_path, ops, seed):
    root = tmp_path / f"model-{seed}"
    store = ChunkStore(root)
    store.scan()
    replica = store.create(1, 1)
    model = bytearray()
    fill = seed % 251 + 1
    try:
        for op, offset, size in ops:
            if op == "write":
                data = bytes([fill]) * size
                fill = fill % 251 + 1
                replica.write(offset, data)
                model.extend(bytes(max(0, offset + size - len(model))))
                model[offset:offset + size] = data
            elif op == "truncate":
                replica.truncate(offset)
                del model[offset:]
                model.extend(bytes(offset - len(model)))
            else:
                replica.close()
                replica = store.open(1)
            assert replica.size == len(model)
        span = len(model) + BLOCK
        assert bytes(replica.read(0, span)) == bytes(model) + bytes(BLOCK)
        for start in range(0, span, 9973):
            got = bytes(replica.read(start, 20_000))
            expected = bytes(model[start:start + 20_000])
            assert got == expected + bytes(20_000 - len(expected))
    finally:
        replica.close()
        shutil.rmtree(root)


def test_data_without_its_crc_update_fails_verification(tmp_path):
    """A crash after the data write but before the CRC write must not verify."""
    store = ChunkStore(tmp_path)
    store.scan()
    replica = store.create(3, 1)
    replica.write(0, b"a" * (2 * BLOCK))
    replica.sync()
    _, meta_path = store.paths(3)
    before_crcs = meta_path.read_bytes()
    replica.write(100, b"new data")
    replica.close()
    meta_path.write_bytes(before_crcs)

    replica = store.open(3)
    assert bytes(replica.read(BLOCK, BLOCK)) == b"a" * BLOCK
    with pytest.raises(ChecksumError) as info:
        replica.read(0, 10)
    assert info.value.block == 0
    # A write into the torn block does not bless it.
    replica.write(200, b"patch")
    with pytest.raises(ChecksumError):
        replica.read(0, 10)
    replica.close()


@pytest.mark.parametrize("flipped", [0, 4095, 4096 + 100, BLOCK - 1])
def test_write_beside_a_flipped_byte_keeps_the_block_failing(tmp_path, flipped):
    """A partial write patches its block's CRC from the bytes it replaces:
    a byte flipped on disk elsewhere in the block must still be caught."""
    store = ChunkStore(tmp_path)
    store.scan()
    replica = store.create(5, 1)
    data = os.urandom(2 * BLOCK)
    replica.write(0, data)
    replica.sync()
    data_path, _ = store.paths(5)
    with open(data_path, "r+b") as f:
        f.seek(flipped)
        byte = f.read(1)[0]
        f.seek(flipped)
        f.write(bytes([byte ^ 0x20]))
    replica.close()
    replica = store.open(5)
    replica.write(8192, b"w" * 4096)
    with pytest.raises(ChecksumError) as info:
        replica.read(8192, 4096)
    assert info.value.block == 0
    assert bytes(replica.read(BLOCK, BLOCK)) == data[BLOCK:]
    replica.close()


def test_grown_data_without_crcs_fails_verification(tmp_path):
    store = ChunkStore(tmp_path)
    store.scan()
    replica = store.create(4, 1)
    replica.close()
    data_path, _ = store.paths(4)
    with open(data_path, "r+b") as f:
        f.write(b"x" * 1000)
    replica = store.open(4)
    assert replica.size == 1000
    with pytest.raises(ChecksumError):
        replica.read(0, 1)
    replica.close()


def test_scan_removes_what_a_crash_left_half_made(tmp_path):
    store = ChunkStore(tmp_path)
    store.scan()
    for chunk, version in ((1, 4), (2, 1), (3, 1), (0x1234, 9)):
        store.create(chunk, version).close()
    _, meta2 = store.paths(2)
    meta2.unlink()                          # deleted halfway: orphan data
    _, meta3 = store.paths(3)
    with open(meta3, "r+b") as f:           # torn header
        f.seek(12)
        f.write(b"\xff")
    temp = store.folder(1) / "0000000000000001.abc.tmp"
    temp.write_bytes(b"half a copy")

    assert store.scan() == {1: 4, 0x1234: 9}
    leftovers = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert leftovers == ["0000000000000001.data", "0000000000000001.meta",
                         "0000000000001234.data", "0000000000001234.meta"]


def test_version_change_is_durable_and_keeps_data(tmp_path):
    store = ChunkStore(tmp_path)
    store.scan()
    replica = store.create(5, 1)
    replica.write(7, b"kept")
    replica.set_version(2)
    replica.close()
    assert store.scan() == {5: 2}
    replica = store.open(5)
    assert replica.version == 2
    assert bytes(replica.read(7, 4)) == b"kept"
    replica.close()


def test_builder_installs_whole_or_not_at_all(tmp_path):
    store = ChunkStore(tmp_path)
    store.scan()
    store.create(6, 1).close()
    builder = store.builder(6)
    builder.put(0, b"\x07" * BLOCK + bytes(BLOCK) + b"end")
    builder.complete(2)
    assert store.scan() == {6: 1}, "an unfinished copy must not be visible"
    builder.abort()
    builder = store.builder(6)
    builder.put(0, b"\x07" * BLOCK + bytes(BLOCK) + b"end")
    builder.complete(2)
    builder.install()
    builder.abort()
    assert store.scan() == {6: 2}
    replica = store.open(6)
    assert bytes(replica.read(0, 2 * BLOCK + 3)) == b"\x07" * BLOCK + bytes(BLOCK) + b"end"
    replica.close()
    data_path, _ = store.paths(6)
    assert os.stat(data_path).st_blocks * 512 < 2 * BLOCK, "the zero block was written"


@pytest.mark.timeout(30)
def test_filesystem_type_agrees_with_findmnt(tmp_path):
    def told(path) -> str:
        return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)],
                              capture_output=True, text=True, check=True).stdout.split()[0]

    for path in (tmp_path, "/proc/self", "/dev/shm", "/"):
        assert filesystem_type(path) == told(path)
    # A mount point whose name mountinfo escapes (the space) or holds as UTF-8.
    with tiny_disk(tmp_path / "data d\u00e4t\u00e4", "1m") as disk:
        (disk / "chunks").mkdir()
        assert filesystem_type(disk / "chunks") == told(disk / "chunks") == "tmpfs"
    assert filesystem_type(tmp_path) == told(tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("in_place", [True, False])
def test_synced_overwrites_read_back_after_reopen(tmp_path, in_place):
    """Growing writes (the metadata file grows too) and overwrites, each synced,
    whichever way sync writes the CRCs out; the replica reopens verified."""
    store = ChunkStore(tmp_path)
    store.scan()
    store.in_place = in_place
    replica = store.create(5, 1)
    model = bytearray()
    for round_no in range(6):
        grow = bytes([round_no + 1]) * (BLOCK + 100)
        replica.write(len(model), grow)
        model += grow
        replica.sync()
        patch = bytes([200 + round_no]) * 300
        at = (round_no * 7919) % (len(model) - 300)
        replica.write(at, patch)
        model[at:at + 300] = patch
        replica.sync()
    replica.close()
    replica = store.open(5)
    try:
        assert replica.in_place == in_place
        assert bytes(replica.read(0, len(model))) == bytes(model)
    finally:
        replica.close()


@pytest.mark.timeout(60)
def test_crc_space_lost_in_a_crash_is_reserved_before_data_changes(tmp_path):
    """After a crash left the metadata file shorter than its data needs, a
    write still reserves CRC space first: on a full disk it fails with ENOSPC
    and the data is as before, rather than being changed under a CRC that
    could not be written."""
    blocks = 960  # CRCs past the first page of the metadata file
    with tiny_disk(tmp_path / "disk", "72m") as disk:
        store = ChunkStore(disk)
        store.scan()
        replica = store.create(6, 1)
        replica.write(0, b"\x01" * (blocks * BLOCK))
        replica.sync()
        replica.close()
        data_path, meta_path = store.paths(6)
        os.truncate(meta_path, CRC_OFFSET + 4)
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError) as full:
                while True:
                    os.write(filler, bytes(64 * 1024))
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(filler)
        replica = store.open(6)
        try:
            with pytest.raises(OSError) as info:
                replica.write((blocks - 10) * BLOCK, b"\x02" * BLOCK)
            assert info.value.errno == errno.ENOSPC
        finally:
            replica.close()
        with open(data_path, "rb") as data:
            data.seek((blocks - 10) * BLOCK)
            assert data.read(BLOCK) == b"\x01" * BLOCK


@pytest.mark.timeout(60)
def test_space_freed_by_a_truncate_is_reserved_again_before_data_changes(tmp_path):
    """Overwrites of pages already reserved skip the reservation (in place);
    pages a truncate freed are not among them: on a full disk a write that
    reaches into them fails with ENOSPC before any byte changes, including the
    bytes of its first page, which kept its space."""
    with tiny_disk(tmp_path / "disk", "8m") as disk:
        store = ChunkStore(disk)
        store.scan()
        store.in_place = True
        replica = store.create(7, 1)
        try:
            replica.write(0, b"\x01" * (4 * BLOCK))
            replica.sync()
            replica.write(BLOCK, b"\x03" * BLOCK)   # an overwrite: no reservation
            replica.truncate(2 * BLOCK)
            replica.sync()
            filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                with pytest.raises(OSError) as full:
                    while True:
                        os.write(filler, bytes(4096))
                assert full.value.errno == errno.ENOSPC
            finally:
                os.close(filler)
            with pytest.raises(OSError) as info:
                replica.write(2 * BLOCK - 4096, b"\x02" * 8192)
            assert info.value.errno == errno.ENOSPC
            assert replica.size == 2 * BLOCK
            expected = b"\x01" * BLOCK + b"\x03" * BLOCK
            assert bytes(replica.read(0, 2 * BLOCK)) == expected
        finally:
            replica.close()


def test_a_write_into_a_block_out_of_the_page_cache_gets_the_right_crc(tmp_path):
    """The bytes a partial write replaces come from the page cache when it
    holds them, else from a read of their whole block: both must patch the
    block's CRC right."""
    store = ChunkStore(tmp_path)
    store.scan()
    replica = store.create(6, 1)
    model = bytearray(os.urandom(3 * BLOCK + 100))
    replica.write(0, model)
    replica.sync()
    os.posix_fadvise(replica.data_fd, 0, 0, os.POSIX_FADV_DONTNEED)
    with pytest.raises(BlockingIOError):
        os.preadv(replica.data_fd, [bytearray(4096)], BLOCK + 8192, os.RWF_NOWAIT)
    for offset, data in [(BLOCK + 8192, b"p" * 4096), (BLOCK + 8192 + 100, b"q" * 10),
                         (3 * BLOCK + 50, b"r" * 200)]:
        replica.write(offset, data)
        model[offset:offset + len(data)] = data
    assert bytes(replica.read(0, len(model))) == bytes(model)
    replica.close()
    replica = store.open(6)
    assert bytes(replica.read(0, len(model))) == bytes(model)
    replica.close()


def test_scattered_writes_into_blocks_out_of_the_page_cache_read_each_block_first(tmp_path):
    """write_pieces asks the disk for every block its writes cover in part
    (so a database's scattered page writes wait for one read, not one each),
    and the blocks it reads so get their CRCs patched right."""
    store = ChunkStore(tmp_path)
    store.scan()
    replica = store.create(7, 1)
    try:
        model = bytearray(os.urandom(6 * BLOCK))
        replica.write(0, model)
        replica.sync()
        pieces = [(BLOCK + 4096, b"a" * 4096),          # inside block 1
                  (3 * BLOCK, b"b" * BLOCK),            # all of block 3: no read
                  (5 * BLOCK - 10, b"c" * 20),          # the end of 4, the start of 5
                  (6 * BLOCK + 100, b"d" * 50)]         # past the stored end: zeros
        assert replica._partial_blocks(pieces) == {1, 4, 5}
        os.posix_fadvise(replica.data_fd, 0, 0, os.POSIX_FADV_DONTNEED)
        replica.write_pieces(pieces)
        for offset, data in pieces:
            model.extend(bytes(max(0, offset + len(data) - len(model))))
            model[offset:offset + len(data)] = data
        assert bytes(replica.read(0, len(model))) == bytes(model)
        replica.close()
        replica = store.open(7)
        assert bytes(replica.read(0, len(model))) == bytes(model)
    finally:
        replica.close()

def largest_folio_pages(fd: int, length: int) -> int:
    """The most pages of the file's first `length` bytes that one page-cache
    folio holds, from the kernel's own page flags (needs root)."""
    compound_tail = 1 << 16
    mapping = mmap.mmap(fd, length, mmap.MAP_SHARED)
    start = ctypes.c_char.from_buffer(mapping)
    try:
        for offset in range(0, length, PAGE):
            mapping[offset]
        with open("/proc/self/pagemap", "rb") as pagemap, \
                open("/proc/kpageflags", "rb") as kpageflags:
            pagemap.seek(ctypes.addressof(start) // PAGE * 8)
            entries = struct.unpack(f"<{length // PAGE}Q", pagemap.read(length // PAGE * 8))
            largest = run = 0
            for entry in entries:
                kpageflags.seek((entry & ((1 << 55) - 1)) * 8)
                flags, = struct.unpack("<Q", kpageflags.read(8))
                run = run + 1 if flags & compound_tail else 1
                largest = max(largest, run)
            return largest
    finally:
        del start
        mapping.close()


def test_a_large_write_leaves_no_page_cache_folio_larger_than_a_block(tmp_path):
    """A 4 KiB overwrite into a folio of megabytes costs the kernel a walk over
    all its buffers: a replica's data goes to the page cache a block at a
    time, so that a database's page writes after a bulk load stay cheap."""
    size = 1024 * 1024
    probe = os.open(tmp_path / "probe", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.pwrite(probe, os.urandom(size), 0)
        if largest_folio_pages(probe, size) * PAGE <= BLOCK:
            pytest.skip("this kernel makes no page-cache folio larger than a block here")
    finally:
        os.close(probe)
    store = ChunkStore(tmp_path / "store")
    store.scan()
    replica = store.create(7, 1)
    try:
        replica.write(0, os.urandom(size))
        assert largest_folio_pages(replica.data_fd, size) * PAGE <= BLOCK
    finally:
        replica.close()
