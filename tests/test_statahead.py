"""Statahead: a walk through a folder's names is answered from entries fetched
ahead, never staler than the kernel's own cache would be."""

import os
import signal
import stat
import threading
import time

import pytest
import trio

from dfs.fs import ATTR_TIMEOUT
from dfs.statahead import BATCH, FIRST_BATCH, Statahead
from faults import signal_server
from test_metaserver_support import ROOT, make_dir, make_file, meta, meta_factory

pytestmark = pytest.mark.timeout(90)
__all__ = ["meta", "meta_factory"]


def _name(i: int) -> str:
    return f"f{i:03d}"


def _make_files(folder, count: int) -> None:
    folder.mkdir(exist_ok=True)
    for i in range(count):
        (folder / _name(i)).write_bytes(b"x" * i)
    # What the kernel learnt from the creates expires.
    time.sleep(ATTR_TIMEOUT + 0.2)


def _walk(folder, first: int, last: int) -> None:
    for i in range(first, last):
        os.stat(folder / _name(i))
    # The fetch the walk started lands.
    time.sleep(0.3)


def _stats_within(paths, seconds: float) -> list | None:
    """lstat of each path in a thread; None if they have not all returned in time."""
    result = []
    thread = threading.Thread(target=lambda: result.append([os.lstat(p) for p in paths]),
                              daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


def test_a_walk_through_a_folder_is_answered_ahead(cluster):
    folder = cluster.mnt / "walk"
    _make_files(folder, 300)
    # Each readdir of the walk asks for more than the one before.
    _walk(folder, 0, 100)
    ahead = [folder / _name(i) for i in range(100, 170)]
    signal_server(cluster.local, "meta", signal.SIGSTOP)
    try:
        found = _stats_within(ahead, 5)
    finally:
        signal_server(cluster.local, "meta", signal.SIGCONT)
    assert found is not None, "a stat ahead of the walk asked the frozen metaserver"
    assert [s.st_size for s in found] == list(range(100, 170))
    assert all(stat.S_ISREG(s.st_mode) for s in found)


def test_changes_here_are_never_answered_from_before(mnt):
    """Changes this mount makes through names the kernel still knows (so no
    lookup takes the entry first) drop what was fetched ahead of them."""
    _make_files(mnt, 100)
    for i in range(50, 55):
        os.stat(mnt / _name(i))
    _walk(mnt, 0, 40)
    os.unlink(mnt / "f050")
    os.chmod(mnt / "f051", 0o600)
    with open(mnt / "f052", "ab") as f:
        f.write(b"more")
    os.rename(mnt / "f053", mnt / "moved")
    os.link(mnt / "f054", mnt / "f054.link")
    # The kernel forgets its entries, so the next stats look the names up.
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    assert not (mnt / "f050").exists()
    assert stat.S_IMODE(os.stat(mnt / "f051").st_mode) == 0o600
    assert os.stat(mnt / "f052").st_size == 52 + 4
    assert not (mnt / "f053").exists() and os.stat(mnt / "moved").st_size == 53
    assert os.stat(mnt / "f054").st_nlink == 2
    assert os.stat(mnt / "f060").st_size == 60


def test_a_change_elsewhere_shows_once_the_attributes_expire(shared_cluster, mnt):
    with shared_cluster.extra_mount() as other_root:
        other = other_root / mnt.name
        _make_files(mnt, 40)
        _walk(mnt, 0, 4)
        os.chmod(other / "f010", 0o600)
        with open(other / "f011", "ab") as f:
            f.write(b"more")
        time.sleep(ATTR_TIMEOUT + 0.2)
        assert stat.S_IMODE(os.stat(mnt / "f010").st_mode) == 0o600
        assert os.stat(mnt / "f011").st_size == 11 + 4


async def _folder_of(c, count: int) -> int:
    folder = (await make_dir(c, ROOT, b"d"))["ino"]
    for i in range(count):
        await make_file(c, folder, b"f%03d" % i)
    return folder


async def _look_up(c, ahead: Statahead, folder: int, *names: bytes) -> None:
    for name in names:
        ahead.looked_up(folder, await c.call("lookup", parent=folder, name=name))


def _readdir_of(c):
    async def fetch(ino, offset, limit):
        return await c.call("readdir", ino=ino, offset=offset, limit=limit)
    return fetch


def test_a_file_removed_elsewhere_is_not_found_again_from_what_was_fetched(
        shared_cluster, mnt):
    """The kernel still holds the names; opening them fails on the metaserver
    (ESTALE), and the lookup the kernel retries must not be answered with the
    vanished file from what was fetched before."""
    with shared_cluster.extra_mount() as other_root:
        other = other_root / mnt.name
        _make_files(mnt, 100)
        for i in (50, 51):
            os.stat(mnt / _name(i))
        _walk(mnt, 0, 40)
        os.unlink(other / "f050")
        os.unlink(other / "f051")
        with pytest.raises(FileNotFoundError):
            open(mnt / "f050", "rb")
        with open(mnt / "f051", "wb") as f:
            f.write(b"new")
        assert (other / "f051").read_bytes() == b"new"


def test_changes_while_a_fetch_is_on_its_way_are_not_kept(meta):
    """What a readdir read before a change of this mount is dropped when it lands."""
    async def body(c):
        folder = await _folder_of(c, 10)
        files = [await c.call("lookup", parent=folder, name=b"f%03d" % i) for i in range(10)]
        await c.call("link", ino=files[6]["ino"], parent=folder, name=b"f006.link")
        read, release = trio.Event(), trio.Event()

        async def fetch(ino, offset, limit):
            reply = await c.call("readdir", ino=ino, offset=offset, limit=limit)
            read.set()
            await release.wait()
            return reply

        async with trio.open_nursery() as nursery:
            ahead = Statahead(fetch, nursery, timeout=30)
            await _look_up(c, ahead, folder, b"f000", b"f001")
            await read.wait()
            await c.call("unlink", parent=folder, name=b"f003")
            ahead.forget_name(folder, b"f003")
            await c.call("setattr", ino=files[4]["ino"], changes={"mode": 0o600})
            ahead.forget_inode(files[4]["ino"])
            release.set()
        assert ahead.answer(folder, b"f003") is None
        assert ahead.answer(folder, b"f004") is None
        assert ahead.answer(folder, b"f006") is None, "a file with two links was kept"
        wire, remaining = ahead.answer(folder, b"f005")
        assert wire["ino"] == files[5]["ino"] and 0 < remaining <= 30
        assert ahead.answer(folder, b"f005") is None, "an entry was answered twice"

    meta.run(body)


def test_a_walk_fetches_batch_after_batch(meta):
    async def body(c):
        count = 2 * BATCH + 10
        folder = await _folder_of(c, count)
        asked = []

        async def fetch(ino, offset, limit):
            asked.append(limit)
            return await c.call("readdir", ino=ino, offset=offset, limit=limit)

        async with trio.open_nursery() as nursery:
            ahead = Statahead(fetch, nursery, timeout=30)
            await _look_up(c, ahead, folder, b"f000", b"f001")
            await trio.sleep(0.2)
            for i in range(2, count):
                assert ahead.answer(folder, b"f%03d" % i) is not None, i
                # Time for each fetch to land before the walk reaches it.
                await trio.sleep(0.001)
        # A walk's first readdir is small; the next ones double, up to BATCH.
        assert asked[:6] == [FIRST_BATCH * 2 ** i for i in range(5)] + [BATCH]

    meta.run(body)


def test_what_a_walk_skips_is_not_kept(meta):
    """A walk that asks for every other name keeps no more than its read-ahead."""
    async def body(c):
        count = 4 * BATCH
        folder = await _folder_of(c, count)
        async with trio.open_nursery() as nursery:
            ahead = Statahead(_readdir_of(c), nursery, timeout=30)
            await _look_up(c, ahead, folder, b"f000", b"f002")
            await trio.sleep(0.2)
            most = 0
            for i in range(4, count, 2):
                assert ahead.answer(folder, b"f%03d" % i) is not None, i
                most = max(most, len(ahead))
                await trio.sleep(0.001)
        assert 0 < most <= 2 * BATCH

    meta.run(body)


def test_only_a_walk_is_fetched_ahead_and_only_while_fresh(meta):
    async def body(c):
        folder = await _folder_of(c, 200)
        async with trio.open_nursery() as nursery:
            ahead = Statahead(_readdir_of(c), nursery, timeout=0.5)
            await _look_up(c, ahead, folder, b"f000", b"f001")
            await trio.sleep(0.2)
            assert ahead.answer(folder, b"f002") is not None
            await trio.sleep(0.4)
            assert ahead.answer(folder, b"f003") is None, "answered past its time"
            # Going back, or far ahead, is no walk: nothing is fetched.
            for name in (b"f000", b"f100"):
                await _look_up(c, ahead, folder, name)
                await trio.sleep(0.2)
                assert ahead.answer(folder, b"f101") is None
            # A step forward is.
            await _look_up(c, ahead, folder, b"f101")
            await trio.sleep(0.2)
            assert ahead.answer(folder, b"f102") is not None

    meta.run(body)
