"""Changes made ahead (dfs mount --async-dirops, dfs/changequeue.py) through
real mounts: each new file or folder, removal and rename is there for every
other mount the moment it looks, fsync makes it durable, and none is lost to
a metaserver restart or an unmount."""

import errno
import os
import signal
import threading

import pyfuse3
import pytest
import trio

from dfs.fs import ATTR_TIMEOUT
from faults import kill_server, processes_mentioning, restart_server, signal_server, wait_for
from inprocess import handlers
from test_dirleases import watched_and_other, watched_mount
from test_reports import sessions

pytestmark = pytest.mark.timeout(120)


def _ahead_mount(cluster):
    """A mount of `cluster` that makes changes ahead: a context manager that
    yields (path, scrape function)."""
    return watched_mount(cluster, "--async-dirops")


@pytest.fixture
def maker_and_other(shared_cluster, mnt):
    with watched_and_other(shared_cluster, mnt, "--async-dirops") as mounts:
        yield mounts


def _made_ahead(metrics) -> float:
    return metrics().get('dfs_fuse_changes_made_ahead_total{outcome="recorded"}', 0.0)


def _create(path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))


def test_files_made_ahead_are_there_for_another_mount_at_once(maker_and_other):
    maker, metrics, other = maker_and_other
    names = [f"f{i}" for i in range(300)]
    for name in names:
        _create(maker / name)
    # No wait: the other mount's listing recalls the maker's lease, which
    # sends what it made first.
    assert sorted(os.listdir(other)) == sorted(names)
    assert _made_ahead(metrics) > 200, "the maker did not make its files ahead"
    assert all(os.stat(other / name).st_mode & 0o777 == 0o640 for name in names[::50])
    assert metrics()["dfs_fuse_changes_made_ahead_pending"] == 0


def test_folders_renames_and_removals_made_ahead_are_seen_elsewhere(maker_and_other):
    maker, metrics, other = maker_and_other
    for i in range(100):
        _create(maker / f"f{i}")
    for i in range(30):
        os.mkdir(maker / f"d{i}", 0o750)
    for i in range(100):
        os.rename(maker / f"f{i}", maker / f"r{i}")
    for i in range(0, 100, 2):
        os.unlink(maker / f"r{i}")
    os.rename(maker / "d0", maker / "moved-dir")
    expected = {*(f"r{i}" for i in range(1, 100, 2)), *(f"d{i}" for i in range(1, 30)),
                "moved-dir"}
    assert set(os.listdir(other)) == expected
    assert _made_ahead(metrics) > 250, "the maker did not make its changes ahead"
    assert os.stat(other / "d5").st_mode & 0o777 == 0o750
    assert os.stat(other).st_nlink == 2 + 30
    assert os.stat(maker).st_nlink == 2 + 30
    (maker / "moved-dir" / "inside").write_bytes(b"in")
    assert (other / "moved-dir" / "inside").read_bytes() == b"in"


def test_dfs_sessions_shows_the_exclusive_leases(shared_cluster, maker_and_other):
    maker, _, _ = maker_and_other
    for i in range(20):
        _create(maker / f"f{i}")
    mine = [s for s in sessions(shared_cluster) if s["mountpoint"] == str(maker.parent)]
    assert [(s["folder_leases"], s["exclusive_leases"]) for s in mine] == [(1, 1)]
    assert "1 folder lease(s) (1 exclusive" in shared_cluster.dfs(
        "sessions", *shared_cluster.cli_args).stdout


def test_each_file_made_ahead_is_found_by_name_elsewhere(maker_and_other):
    maker, metrics, other = maker_and_other
    for i in range(40):
        _create(maker / f"burst-{i}")
    for i in range(60):
        _create(maker / f"f{i}")
        assert os.path.exists(other / f"f{i}"), f"f{i} not found by the other mount"
    assert _made_ahead(metrics) > 0


def test_a_file_made_ahead_lives_like_any_other(maker_and_other):
    maker, metrics, other = maker_and_other
    for i in range(20):
        _create(maker / f"warm-{i}")
    with open(maker / "data", "xb") as f:
        f.write(b"first " * 1000)
    os.chmod(maker / "data", 0o600)
    os.rename(maker / "data", maker / "moved")
    assert (other / "moved").read_bytes() == b"first " * 1000
    assert os.stat(other / "moved").st_mode & 0o777 == 0o600
    os.unlink(maker / "moved")
    # Once the other mount's kernel lets go of the name (as for any removal).
    wait_for(lambda: not os.path.exists(other / "moved"), ATTR_TIMEOUT + 5, "the removal")
    with open(maker / "moved", "xb") as f:
        f.write(b"second")
    assert (other / "moved").read_bytes() == b"second"
    assert sorted(os.listdir(maker)) == sorted([*(f"warm-{i}" for i in range(20)), "moved"])


def test_fsync_makes_files_made_ahead_survive_the_mounts_death(shared_cluster, mnt):
    with _ahead_mount(shared_cluster) as (maker, metrics):
        folder = maker / mnt.name
        for i in range(200):
            _create(folder / f"f{i}")
        made = _made_ahead(metrics)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        assert made + metrics()["dfs_fuse_changes_made_ahead_pending"] > 100
        for pid in processes_mentioning(str(maker)):
            os.kill(pid, signal.SIGKILL)
    assert sorted(os.listdir(mnt)) == sorted(f"f{i}" for i in range(200))


def test_an_unmount_sends_what_was_made_ahead(shared_cluster, mnt):
    with _ahead_mount(shared_cluster) as (maker, _):
        for i in range(500):
            _create(maker / mnt.name / f"f{i}")
    assert len(os.listdir(mnt)) == 500


@pytest.mark.timeout(180)
def test_no_file_made_ahead_is_lost_to_a_metaserver_restart(cluster):
    with _ahead_mount(cluster) as (maker, metrics), cluster.extra_mount() as other:
        os.mkdir(maker / "d")
        made, stop = [], threading.Event()

        def keep_making():
            i = 0
            while not stop.is_set():
                try:
                    _create(maker / "d" / f"f{i}")
                    made.append(f"f{i}")
                except OSError:
                    pass
                i += 1

        thread = threading.Thread(target=keep_making, daemon=True)
        thread.start()
        try:
            wait_for(lambda: len(made) > 300, 30, "files to be made")
            kill_server(cluster.local, "meta")
            restart_server(cluster.local, "meta")
            count = len(made)
            wait_for(lambda: len(made) > count + 300, 60, "files made after the restart")
        finally:
            stop.set()
            thread.join(30)
        assert _made_ahead(metrics) > 0
        found = set(os.listdir(other / "d"))
        assert set(made) <= found, f"lost: {sorted(set(made) - found)[:10]}"
        assert metrics()['dfs_fuse_changes_made_ahead_total{outcome="refused"}'] == 0


@pytest.mark.timeout(180)
def test_others_see_changes_made_ahead_of_a_metaserver_restart_at_once(cluster):
    """Files made ahead while the metaserver is down, or before it died without
    having them, are there for another mount's first look after the restart:
    the maker sends them again before anything else on its new connection, and
    the restarted metaserver holds others' requests naming folders until then."""
    os.mkdir(cluster.mnt / "d")
    folder = os.stat(cluster.mnt / "d").st_ino
    names = [b"f%d" % i for i in range(40)]

    async def body():
        async with handlers(cluster.ref, async_dirops=True) as fs:
            ctx = _Caller()
            for i in range(3):
                with pytest.raises(pyfuse3.FUSEError):
                    await fs.lookup(folder, b"missing-%d" % i, None)
            assert fs.dirleases.exclusive(folder) is not None, "no exclusive lease"
            info, _ = await fs.create(folder, b"first", 0o644, os.O_WRONLY, ctx)
            await fs.release(info.fh)
            await fs.ahead.settled()
            with trio.fail_after(10):
                while not fs.ahead.inodes:
                    await trio.sleep(0.01)
            signal_server(cluster.local, "meta", signal.SIGSTOP)
            for name in names:
                info, _ = await fs.create(folder, name, 0o644, os.O_WRONLY, ctx)
                await fs.release(info.fh)
            assert fs.ahead.made - fs.ahead.done == len(names), "not all made ahead"
            await trio.to_thread.run_sync(kill_server, cluster.local, "meta")
            await trio.to_thread.run_sync(restart_server, cluster.local, "meta")
            listing = await trio.to_thread.run_sync(os.listdir, cluster.mnt / "d")
            assert sorted(listing) == sorted(n.decode() for n in [b"first", *names])
            await fs.ahead.settled()
            assert fs.ahead.refused == 0

    trio.run(body)


def test_a_refused_file_made_ahead_fails_its_fsync(shared_cluster, mnt):
    """Should the metaserver refuse a change made ahead (the mount's list of
    names was wrong), the failure is logged, and a new file's fsync fails
    with EIO."""
    (mnt / "taken").write_bytes(b"")
    folder = os.stat(mnt).st_ino

    async def body():
        async with handlers(shared_cluster.ref, async_dirops=True) as fs:
            for i in range(3):
                with pytest.raises(pyfuse3.FUSEError):
                    await fs.lookup(folder, b"missing-%d" % i, None)
            lease = fs.dirleases.exclusive(folder)
            assert lease is not None, "no exclusive lease"
            ctx = _Caller()
            # The first create asks for inode numbers.
            info, _ = await fs.create(folder, b"first", 0o644, os.O_WRONLY, ctx)
            await fs.release(info.fh)
            with trio.fail_after(10):
                while not fs.ahead.inodes:
                    await trio.sleep(0.01)
            # A name list that lost one: the mount takes "taken" for free.
            lease.names.discard(b"taken")
            info, entry = await fs.create(folder, b"taken", 0o644, os.O_WRONLY, ctx)
            assert entry.st_ino in fs.ahead.pending
            # Its first write asks the metaserver for no capability to drop.
            assert entry.st_ino in fs.no_capability
            with pytest.raises(pyfuse3.FUSEError) as failed:
                await fs.fsync(info.fh, False)
            assert failed.value.errno == errno.EIO
            assert fs.ahead.refused == 1
            await fs.release(info.fh)
            # A removal of a name the list has but the folder has not.
            lease.names.add(b"never")
            await fs.unlink(folder, b"never", ctx)
            await fs.ahead.settled()
            assert fs.ahead.refused == 2
            assert b"never" in lease.names

    trio.run(body)


class _Caller:
    uid = gid = 0
