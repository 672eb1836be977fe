"""A random read's whole block goes to the kernel's page cache (dfs/pagefeed.py),
and never a page older than the file."""

import errno
import ctypes
import mmap
import os
import random
import threading
import time
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from dfs.pagefeed import MAX_UNDER_WAY, PAGE, STORE_THREADS, PageFeed
from faults import wait_for
from inprocess import handlers

pytestmark = pytest.mark.timeout(120)

BLOCK = 64 * 1024
PAGES_PER_BLOCK = BLOCK // PAGE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _resident(path) -> list[int]:
    """The indexes of the file's pages in the page cache (mincore of a mapping,
    which itself reads nothing)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return [i for i in range(pages) if vec.raw[i] & 1]
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def _block_pages(block: int) -> list[int]:
    return list(range(block * PAGES_PER_BLOCK, (block + 1) * PAGES_PER_BLOCK))


def _wait_for_block(path, block: int) -> None:
    """Wait until the page cache holds exactly the pages of `block` of the file."""
    seen = []

    def there() -> bool:
        seen[:] = _resident(path)
        return seen == _block_pages(block)

    try:
        wait_for(there, 10, f"block {block} to reach the page cache")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the pages there: {seen}") from None


def _written(path, blocks: int = 8) -> bytes:
    """Write a file and evict it from the page cache, once the mount has taken in
    that its writer closed: the release reaches the mount some time after close
    returns (later still on a busy machine), and until it has, a read stores
    nothing."""
    data = os.urandom(blocks * BLOCK)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        def fed() -> bool:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.pread(fd, PAGE, BLOCK + 3 * PAGE)
            time.sleep(0.05)
            return _resident(path) == _block_pages(1)

        wait_for(fed, 10, "the mount to take in that the file's writer closed")
    finally:
        os.close(fd)
    _evict(path)
    return data


def _evict(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert _resident(path) == []


def test_a_random_read_brings_its_whole_block_into_the_page_cache(mnt):
    path = mnt / "f"
    data = _written(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        at = 3 * BLOCK + 5 * PAGE + 10
        assert os.pread(fd, 100, at) == data[at:at + 100]
        _wait_for_block(path, 3)
        assert os.pread(fd, BLOCK, 3 * BLOCK) == data[3 * BLOCK:4 * BLOCK]
    finally:
        os.close(fd)


def test_a_random_read_in_read_ahead_brings_its_whole_block_into_the_page_cache(mnt):
    """Blocks read-ahead holds go to the kernel's page cache as fetched ones do,
    or every later read in them would reach the mount."""
    path = mnt / "f"
    data = _written(path, 64)
    fd = os.open(path, os.O_RDONLY)
    try:
        # Sequential reads of the first half: the rest is read ahead into the
        # mount's cache.
        for pos in range(0, len(data) // 2, BLOCK):
            assert os.pread(fd, BLOCK, pos) == data[pos:pos + BLOCK]

        def dropped() -> bool:
            # The kernel's own read-ahead may still be landing pages.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            time.sleep(0.05)
            return _resident(path) == []

        wait_for(dropped, 10, "the file's pages to leave the page cache")
        at = 40 * BLOCK + 2 * PAGE
        assert os.pread(fd, PAGE, at) == data[at:at + PAGE]
        _wait_for_block(path, 40)
    finally:
        os.close(fd)


def test_nothing_is_stored_while_this_mount_may_write_the_file(mnt):
    path = mnt / "f"
    data = _written(path)
    writer = os.open(path, os.O_RDWR)
    reader = os.open(path, os.O_RDONLY)
    try:
        at = 2 * BLOCK + 7 * PAGE
        assert os.pread(reader, PAGE, at) == data[at:at + PAGE]
        time.sleep(0.5)
        assert _resident(path) == [at // PAGE]
        os.close(writer)
        writer = -1
        at = 5 * BLOCK + 3 * PAGE

        def fed() -> bool:
            # The writer's release reaches the mount some time after close
            # returns: until it has, a read stores nothing, so read again.
            os.posix_fadvise(reader, 5 * BLOCK, BLOCK, os.POSIX_FADV_DONTNEED)
            assert os.pread(reader, PAGE, at) == data[at:at + PAGE]
            time.sleep(0.1)
            return len(_resident(path)) == 1 + PAGES_PER_BLOCK

        wait_for(fed, 10, "the second block to reach the page cache")
        assert _resident(path) == sorted([2 * PAGES_PER_BLOCK + 7] + _block_pages(5))
    finally:
        if writer >= 0:
            os.close(writer)
        os.close(reader)


def test_a_change_from_another_mount_replaces_stored_pages_at_the_next_open(shared_cluster,
                                                                           mnt):
    path = mnt / "f"
    _written(path)
    with shared_cluster.extra_mount() as other:
        with open(path, "rb", buffering=0) as f:
            f.seek(4 * BLOCK + 9 * PAGE)
            f.read(PAGE)
            _wait_for_block(path, 4)
        newer = os.urandom(8 * BLOCK)
        (other / mnt.name / "f").write_bytes(newer)
        with open(path, "rb") as f:
            f.seek(4 * BLOCK)
            assert f.read(BLOCK) == newer[4 * BLOCK:5 * BLOCK]


def test_a_truncation_cuts_stored_pages(mnt):
    path = mnt / "f"
    data = _written(path)
    with open(path, "rb", buffering=0) as f:
        f.seek(6 * BLOCK + PAGE)
        f.read(PAGE)
        _wait_for_block(path, 6)
        cut = 6 * BLOCK + 3 * PAGE + 123
        os.truncate(path, cut)
        os.truncate(path, 8 * BLOCK)
        f.seek(6 * BLOCK)
        assert f.read(BLOCK) == data[6 * BLOCK:cut] + bytes(7 * BLOCK - cut)


def test_reads_racing_changes_see_every_change(mnt):
    """A reader keeps fetching blocks while the same mount rewrites pages in
    them and cuts the file: a store landing after a change would bring an
    older page back."""
    path = mnt / "f"
    blocks = 4
    full = blocks * BLOCK
    model = bytearray(_written(path, blocks))
    stop = threading.Event()
    failures = []

    def read_around():
        fd = os.open(path, os.O_RDONLY)
        try:
            while not stop.is_set():
                os.pread(fd, PAGE, random.randrange(blocks * PAGES_PER_BLOCK) * PAGE)
                # Every read then reaches the mount, and most offer a store.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            failures.append(exc)
        finally:
            os.close(fd)

    reader = threading.Thread(target=read_around, daemon=True)
    reader.start()
    check = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + 20
        rounds = 0
        while time.monotonic() < deadline and rounds < 600 and not failures:
            if rounds % 4 == 3:
                # Cut the file, then (four rounds later) let it grow back.
                size = random.randrange(len(model)) if len(model) == full else full
                os.truncate(path, size)
                model = model[:size] + bytes(max(0, size - len(model)))
            else:
                page = random.randrange(blocks * PAGES_PER_BLOCK)
                content = os.urandom(PAGE)
                with open(path, "r+b") as f:
                    f.seek(page * PAGE)
                    f.write(content)
                model.extend(bytes(max(0, (page + 1) * PAGE - len(model))))
                model[page * PAGE:(page + 1) * PAGE] = content
            time.sleep(0.005)
            assert os.pread(check, full + PAGE, 0) == model, f"round {rounds}"
            rounds += 1
    finally:
        stop.set()
        reader.join(10)
        os.close(check)
    assert not failures
    assert rounds >= 50


def test_an_open_waits_for_the_stores_under_way():
    """The guarantees that do not depend on timing, with the kernel's store
    replaced by one that waits to be let through."""
    let_through = threading.Event()
    stored = []

    def store(ino, pieces):
        let_through.wait(10)
        stored.append((ino, [offset for offset, _ in pieces]))

    async def scenario():
        feed = PageFeed(store)
        current = True
        feed.offer(7, [(0, b"a" * PAGE)], lambda: current)
        feed.offer(7, [], lambda: current)
        feed.offer(8, [(PAGE, b"b" * PAGE)], lambda: False)
        with trio.move_on_after(0.3) as waited:
            await feed.settle(7)
        assert waited.cancelled_caught, "settle returned with a store under way"
        await feed.settle(8)
        let_through.set()
        with trio.fail_after(5):
            await feed.settle(7)
        assert stored == [(7, [0])]
        # Stores wait for one of STORE_THREADS threads; one whose data
        # went stale meanwhile is dropped.
        let_through.clear()
        for i in range(STORE_THREADS + 1):
            feed.offer(7, [(i * PAGE, b"c" * PAGE)], lambda: current)
        await trio.sleep(0.1)
        current = False
        let_through.set()
        with trio.fail_after(5):
            await feed.close()
        assert len(stored) == 1 + STORE_THREADS
        feed.offer(9, [(0, b"e" * PAGE)], lambda: True)
        await trio.sleep(0.1)
        assert len(stored) == 1 + STORE_THREADS

    trio.run(scenario)


def test_stores_under_way_are_bounded():
    let_through = threading.Event()
    stored = []

    def store(ino, pieces):
        let_through.wait(10)
        stored.append(ino)

    async def scenario():
        feed = PageFeed(store)
        for ino in range(MAX_UNDER_WAY + 5):
            feed.offer(ino, [(0, b"x" * PAGE)], lambda: True)
        let_through.set()
        with trio.fail_after(10):
            for ino in range(MAX_UNDER_WAY + 5):
                await feed.settle(ino)
        await feed.close()

    trio.run(scenario)
    assert sorted(stored) == list(range(MAX_UNDER_WAY))


def test_a_failing_store_leaves_the_feed_working():
    """A store that fails, however it fails, still counts as landed and its
    thread takes the next one: an open waiting for the file must not hang."""
    calls = []

    def store(ino, pieces):
        calls.append(ino)
        if ino == 1:
            raise OSError(errno.ENOENT, "the kernel forgot the inode")
        if ino == 2:
            raise RuntimeError("a bug")

    async def scenario():
        feed = PageFeed(store)
        # More failures than the feed has threads, then a store that must land.
        for ino in (1, 2, 2, 2, 3):
            feed.offer(ino, [(0, b"x" * PAGE)], lambda: True)
        with trio.fail_after(5):
            for ino in (1, 2, 3):
                await feed.settle(ino)
        await feed.close()

    trio.run(scenario)
    assert sorted(calls) == [1, 2, 2, 2, 3]


def test_a_truncation_is_answered_only_once_the_stores_under_way_landed(shared_cluster, mnt):
    """The kernel cuts a file's page cache after the truncation's reply, so a
    store of older pages landing later would outlive the cut. The mount's
    handler runs in process on the shared cluster, with the store into the
    kernel replaced by one that waits to be let through."""
    path = mnt / "cut"
    path.write_bytes(os.urandom(4 * BLOCK))
    ino = os.stat(path).st_ino
    ref = shared_cluster.ref
    let_through = threading.Event()
    events = []

    def store(ino, pieces):
        let_through.wait(10)
        events.append("stored")

    async def scenario():
        async with handlers(ref) as fs:
            await fs.page_feed.close()
            fs.page_feed = PageFeed(store)
            try:
                await truncate_while_a_store_waits(fs, fs.nursery)
            finally:
                let_through.set()

    async def truncate_while_a_store_waits(fs, nursery):
        fs.page_feed.offer(ino, [(0, b"x" * PAGE)], lambda: True)
        attr = pyfuse3.EntryAttributes()
        attr.st_size = BLOCK
        fields = SimpleNamespace(update_mode=False, update_uid=False, update_gid=False,
                                 update_atime=False, update_mtime=False, update_size=True)

        async def cut():
            await fs.setattr(ino, attr, fields, None, None)
            events.append("answered")

        nursery.start_soon(cut)
        with trio.fail_after(10):
            while (await fs.meta.call("getattr", ino=ino))["size"] != BLOCK:
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        assert events == [], "the truncation was answered with a store under way"
        let_through.set()
        with trio.fail_after(10):
            while "answered" not in events:
                await trio.sleep(0.01)
        assert events == ["stored", "answered"]

    trio.run(scenario)
