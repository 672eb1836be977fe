"""Folder leases through real mounts: a mount that answers "no such name" by
itself still finds at once what another mount made (dfs/dirleases.py)."""

import os
import signal
import threading
import time
from contextlib import contextmanager

import pyfuse3
import pytest
import trio

from dfs.dirleases import MISS_WINDOW
from dfs.fs import ATTR_TIMEOUT
from faults import kill_server, processes_mentioning, restart_server, signal_server, wait_for
from inprocess import handlers
from metaserver.dirleases import LEASE
from test_metrics import free_port, scrape

pytestmark = pytest.mark.timeout(120)


@contextmanager
def watched_mount(cluster, *options: str):
    """A mount of `cluster` with `options`, serving its metrics; yields (path,
    scrape function)."""
    port = free_port()
    path = cluster.mount("/", *options, "--metrics-listen", f"127.0.0.1:{port}")
    try:
        yield path, lambda: scrape(port)
    finally:
        cluster.unmount(path)


@contextmanager
def watched_and_other(cluster, mnt, *options: str):
    """A watched mount with `options` and a plain one of `cluster`; yields the
    folder `mnt` in the first, the first's metrics, and `mnt` in the other."""
    with watched_mount(cluster, *options) as (first, metrics), \
            cluster.extra_mount() as other:
        yield first / mnt.name, metrics, other / mnt.name


@pytest.fixture
def holder_and_other(shared_cluster, mnt):
    with watched_and_other(shared_cluster, mnt) as mounts:
        yield mounts


def _lease(folder, metrics) -> None:
    """Look up names not in `folder` until the mount answers them itself."""
    for i in range(3):
        answered = _answered(metrics)
        assert not os.path.exists(folder / f"missing-{i}")
    assert _answered(metrics) == answered + 1, "the lease did not answer"


def _answered(metrics) -> float:
    return metrics()["dfs_fuse_dir_lease_answers_total"]


def test_names_made_elsewhere_are_found_at_once(holder_and_other):
    holder, metrics, other = holder_and_other
    (other / "target").write_bytes(b"t")

    def move_in(path):
        (other / "src").write_bytes(b"r")
        os.rename(other / "src", path)

    makers = {
        "file": lambda p: p.write_bytes(b"x"),
        "dir": os.mkdir,
        "symlink": lambda p: os.symlink("../target", p),
        "link": lambda p: os.link(other / "target", p),
        "renamed": move_in,
        "fifo": os.mkfifo,
    }
    for kind, make in makers.items():
        os.mkdir(other / kind)
        _lease(holder / kind, metrics)
        make(other / kind / "new")
        assert os.path.lexists(other / kind / "new")
        assert os.path.lexists(holder / kind / "new"), f"{kind} made elsewhere not found"
    assert metrics()["dfs_fuse_dir_leases"] == 0, "every lease was recalled"
    assert sorted(os.listdir(holder)) == sorted([*makers, "target"])


def test_the_holder_finds_its_own_changes(holder_and_other):
    holder, metrics, other = holder_and_other
    _lease(holder, metrics)
    (holder / "a").write_bytes(b"a")
    os.mkdir(holder / "d")
    os.symlink("d", holder / "s")
    os.rename(holder / "a", holder / "b")
    # Past the kernel's own memory of the names: the mount is asked.
    time.sleep(ATTR_TIMEOUT + 0.2)
    assert [os.path.lexists(holder / n) for n in "abds"] == [False, True, True, True]
    os.unlink(holder / "b")
    assert not os.path.exists(holder / "b")
    (holder / "b").write_bytes(b"again")
    time.sleep(ATTR_TIMEOUT + 0.2)
    assert (holder / "b").read_bytes() == b"again"
    assert metrics()["dfs_fuse_dir_leases"] == 1, "the holder's own changes recalled its lease"
    # A name the other mount removes and makes again.
    os.unlink(other / "b")
    assert not os.path.exists(holder / "b")
    (other / "b").write_bytes(b"from the other")
    assert (holder / "b").read_bytes() == b"from the other"
    # Leased again only after twice as many misses as the first time.
    answered = _answered(metrics)
    for i in range(4):
        assert not os.path.exists(holder / f"again-{i}")
    assert _answered(metrics) == answered
    assert not os.path.exists(holder / "again-4")
    assert _answered(metrics) == answered + 1


def test_a_frozen_holder_delays_a_change_elsewhere_by_one_lease(holder_and_other):
    holder, metrics, other = holder_and_other
    _lease(holder, metrics)
    served = processes_mentioning(str(holder.parent))
    assert served, "no process serves the holder's mount"
    made = threading.Event()
    maker = threading.Thread(target=lambda: ((other / "late").write_bytes(b"1"), made.set()),
                             daemon=True)
    for pid in served:
        os.kill(pid, signal.SIGSTOP)
    try:
        maker.start()
        # The change waits for the frozen holder's lease to run out, not longer.
        assert made.wait(LEASE + 20), "a change waited on a frozen holder's lease"
    finally:
        for pid in served:
            os.kill(pid, signal.SIGCONT)
    # Its lease ran out while it was frozen: it asks the metaserver again.
    assert (holder / "late").read_bytes() == b"1"


def test_a_lease_is_not_trusted_past_its_end(shared_cluster, mnt):
    """A mount that cannot renew its lease stops answering from it (the
    metaserver gives it up as long after the last renewal, and may then let
    others add names)."""
    os.mkdir(mnt / "d")
    folder = os.stat(mnt / "d").st_ino

    async def body():
        async with handlers(shared_cluster.ref) as fs:
            for i in range(3):
                with pytest.raises(pyfuse3.FUSEError):
                    await fs.lookup(folder, b"missing-%d" % i, None)
            assert fs.dirleases.answered == 1
            signal_server(shared_cluster.local, "meta", signal.SIGSTOP)
            try:
                await trio.sleep(LEASE)
                with trio.move_on_after(1) as waiting:
                    await fs.lookup(folder, b"later", None)
                assert waiting.cancelled_caught, "answered from a lease past its end"
            finally:
                signal_server(shared_cluster.local, "meta", signal.SIGCONT)

    trio.run(body)


def test_misses_far_apart_take_no_lease(shared_cluster, mnt):
    """A folder where names are looked up now and then is not leased: its
    names, which may be many, are fetched only for a burst of misses."""
    os.mkdir(mnt / "d")
    folder = os.stat(mnt / "d").st_ino

    async def body():
        async with handlers(shared_cluster.ref) as fs:
            with pytest.raises(pyfuse3.FUSEError):
                await fs.lookup(folder, b"first", None)
            await trio.sleep(MISS_WINDOW + 0.2)
            with pytest.raises(pyfuse3.FUSEError):
                await fs.lookup(folder, b"a while later", None)
            assert folder not in fs.dirleases.leases
            with pytest.raises(pyfuse3.FUSEError):
                await fs.lookup(folder, b"right after", None)
            assert folder in fs.dirleases.leases

    trio.run(body)


@pytest.mark.timeout(180)
def test_leases_of_a_metaserver_killed_are_not_trusted(cluster):
    with watched_mount(cluster) as (holder, metrics), cluster.extra_mount() as other:
        os.mkdir(holder / "d")
        _lease(holder / "d", metrics)
        kill_server(cluster.local, "meta")
        restart_server(cluster.local, "meta")
        (other / "d" / "after").write_bytes(b"made after the restart")
        assert (holder / "d" / "after").read_bytes() == b"made after the restart"
        # The mount leases the folder again from the new metaserver.
        wait_for(lambda: metrics()["dfs_fuse_dir_leases"] == 0, 30, "old leases to go")
        _lease(holder / "d", metrics)
        (other / "d" / "later").write_bytes(b"2")
        assert (holder / "d" / "later").read_bytes() == b"2"
