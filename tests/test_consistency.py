"""Close-to-open consistency between two mounts of one cluster."""

import os
import signal
import threading
import time

import pytest

from dfs.fs import ATTR_TIMEOUT
from faults import signal_server


@pytest.fixture
def two_mounts(shared_cluster, mnt):
    with shared_cluster.extra_mount() as other:
        yield mnt, other / mnt.name


def test_close_to_open(two_mounts):
    a, b = two_mounts
    with open(a / "f", "wb") as f:
        f.write(b"version one")
    with open(b / "f", "rb") as f:
        assert f.read() == b"version one"
    with open(a / "f", "wb") as f:
        f.write(b"version two, longer")
    with open(b / "f", "rb") as f:
        assert f.read() == b"version two, longer"
    with open(b / "f", "r+b") as f:
        f.write(b"VERSION")
    with open(a / "f", "rb") as f:
        assert f.read() == b"VERSION two, longer"


def test_fsync_visible_before_close(two_mounts):
    a, b = two_mounts
    with open(a / "g", "wb") as f:
        f.write(b"synced")
        f.flush()
        os.fsync(f.fileno())
        with open(b / "g", "rb") as g:
            assert g.read() == b"synced"


def test_namespace_changes_visible(two_mounts):
    a, b = two_mounts
    os.mkdir(a / "d")
    (a / "d" / "x").write_bytes(b"1")
    os.rename(a / "d" / "x", a / "d" / "y")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sorted(os.listdir(b / "d")) != ["y"]:
        time.sleep(0.1)
    assert sorted(os.listdir(b / "d")) == ["y"]
    assert (b / "d" / "y").read_bytes() == b"1"


def test_rename_is_atomic_for_readers(two_mounts):
    a, b = two_mounts
    (a / "config").write_bytes(b"old" * 1000)
    for i in range(20):
        (a / "config.tmp").write_bytes(f"new{i}".encode() * 1000)
        os.rename(a / "config.tmp", a / "config")
        content = (b / "config").read_bytes()
        assert content in (f"new{i}".encode() * 1000, f"new{i - 1}".encode() * 1000,
                           b"old" * 1000)


def _fstat_within(fd: int, seconds: float) -> os.stat_result | None:
    """fstat in a thread; None if it has not returned within `seconds`."""
    result = []
    thread = threading.Thread(target=lambda: result.append(os.fstat(fd)), daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


@pytest.mark.timeout(60)
def test_a_folder_changed_here_is_stat_from_the_change_reply(cluster):
    """The kernel forgets a folder's attributes after each change in it and asks
    again; the mount answers from what the change's reply carried, so even a
    frozen metaserver is not asked."""
    top = cluster.mnt / "top"
    (top / "a").mkdir(parents=True)
    (top / "b").mkdir()
    (top / "a" / "f").write_bytes(b"x")
    fds = {name: os.open(top / name, os.O_RDONLY | os.O_DIRECTORY) for name in ("a", "b")}
    try:
        for step in range(3):
            before = {name: os.fstat(fd) for name, fd in fds.items()}
            if step == 0:
                os.mkdir("sub", dir_fd=fds["a"])
            elif step == 1:
                os.rename("f", "g", src_dir_fd=fds["a"], dst_dir_fd=fds["b"])
            else:
                os.rmdir("sub", dir_fd=fds["a"])
            signal_server(cluster.local, "meta", signal.SIGSTOP)
            try:
                after = {name: _fstat_within(fd, 5) for name, fd in fds.items()}
            finally:
                signal_server(cluster.local, "meta", signal.SIGCONT)
            changed = ("a",) if step != 1 else ("a", "b")
            for name in changed:
                assert after[name] is not None, f"step {step}: fstat of {name} waited"
                assert after[name].st_mtime_ns > before[name].st_mtime_ns
            assert after["a"].st_nlink == before["a"].st_nlink + (1, 0, -1)[step]
    finally:
        for fd in fds.values():
            os.close(fd)


@pytest.mark.timeout(60)
def test_a_folder_renamed_right_after_a_change_in_it_shows_the_rename(mnt):
    """The kept attributes of a folder give way to those its own rename left."""
    (mnt / "x").mkdir()
    (mnt / "x" / "f").write_bytes(b"")
    before = time.time_ns()
    os.rename(mnt / "x", mnt / "y")
    assert os.stat(mnt / "y").st_ctime_ns >= before


@pytest.mark.timeout(60)
def test_a_folder_changed_elsewhere_shows_it_once_the_attributes_expire(two_mounts):
    """What a change here brought back is kept no longer than the kernel would
    keep attributes itself."""
    a, b = two_mounts
    os.mkdir(a / "d")
    fd = os.open(a / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.mkdir("here", dir_fd=fd)
        os.mkdir(b / "d" / "there")
        time.sleep(ATTR_TIMEOUT + 0.2)
        assert os.fstat(fd).st_nlink == 4
    finally:
        os.close(fd)
