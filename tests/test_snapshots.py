"""Snapshots through real mounts: a copy of a folder at one point in time that
shares its chunks, changed on either side without touching the other."""

import errno
import hashlib
import json
import os
import random
import shutil
import time

import pytest

from conftest import TEST_CHUNK_SIZE

pytestmark = pytest.mark.timeout(240)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_state(root) -> dict:
    """Every entry under `root`: kind, mode, mtime and content (or target)."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                state[key] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[key] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
                state[key] = ("file", st.st_mode, st.st_mtime_ns, st.st_size, content)
    return state


def fresh_state(cluster, path: str) -> dict:
    """tree_state through a mount of its own: nothing read before is cached."""
    with cluster.extra_mount() as mount:
        return tree_state(mount / path)


def chunk_count(cluster) -> int:
    return json.loads(cluster.dfs("status", *cluster.cli_args, "--json").stdout)["chunks"]


def test_a_snapshot_keeps_its_moment_while_both_sides_change(cluster):
    rng = random.Random(5)
    data = cluster.mnt / "data"
    (data / "sub").mkdir(parents=True)
    (data / "big").write_bytes(rng.randbytes(3 * TEST_CHUNK_SIZE + 12345))
    (data / "sub" / "small").write_bytes(b"small file\n")
    (data / "cut").write_bytes(rng.randbytes(2 * TEST_CHUNK_SIZE))
    with open(data / "sparse", "wb") as f:
        f.seek(2 * TEST_CHUNK_SIZE)
        f.write(b"after a hole")
    os.symlink("sub/small", data / "link")
    os.link(data / "big", data / "big-again")
    os.setxattr(data / "sub" / "small", "user.tag", b"kept")
    os.utime(data / "sub", ns=(1_000_000_000, 2_000_000_000))
    # A writer that holds a lease on big's first chunk while the snapshot is taken.
    fd = os.open(data / "big", os.O_RDWR)
    os.pwrite(fd, b"before the snapshot", 0)
    os.fsync(fd)
    before = tree_state(data)

    cluster.dfs("snapshot", *cluster.cli_args, "/data", "/snap")
    snap = cluster.mnt / "snap"
    assert fresh_state(cluster, "snap") == before
    assert os.stat(snap / "big").st_ino == os.stat(snap / "big-again").st_ino
    assert os.stat(snap / "big").st_nlink == 2
    assert os.getxattr(snap / "sub" / "small", "user.tag") == b"kept"

    # The source changes every way a file can: the old lease, a new one, a
    # cut into a shared chunk, growth, removal, creation.
    os.pwrite(fd, b"after the snapshot", 0)
    os.fsync(fd)
    os.close(fd)
    with open(data / "big", "r+b") as f:
        f.seek(2 * TEST_CHUNK_SIZE + 100)
        f.write(b"x" * 5000)
    os.truncate(data / "sparse", TEST_CHUNK_SIZE // 2)
    os.truncate(data / "cut", TEST_CHUNK_SIZE + 1000)
    with open(data / "sub" / "small", "ab") as f:
        f.write(b"appended\n")
    os.unlink(data / "link")
    (data / "new").write_bytes(b"new")
    assert fresh_state(cluster, "snap") == before
    assert (data / "big").read_bytes()[:18] == b"after the snapshot"
    assert (data / "big-again").read_bytes()[:18] == b"after the snapshot"
    assert os.stat(data / "sparse").st_size == TEST_CHUNK_SIZE // 2
    assert (data / "cut").read_bytes() == (snap / "cut").read_bytes()[:TEST_CHUNK_SIZE + 1000]

    # The snapshot changes without touching the source.
    changed = fresh_state(cluster, "data")
    with open(snap / "big", "r+b") as f:
        f.write(b"snapshot's own")
    os.truncate(snap / "sub" / "small", 3)
    assert fresh_state(cluster, "data") == changed
    assert (snap / "big-again").read_bytes()[:14] == b"snapshot's own"
    assert (snap / "sub" / "small").read_bytes() == b"sma"

    # Each side outlives the other, and their chunks go once both are gone.
    cluster.dfs("snapshot", *cluster.cli_args, "/snap", "/snap2")
    kept = fresh_state(cluster, "snap2")
    cluster.dfs("fsck", *cluster.cli_args)
    for folder in ("data", "snap"):
        shutil.rmtree(cluster.mnt / folder)
    assert fresh_state(cluster, "snap2") == kept
    assert cluster.dfs("fsck", *cluster.cli_args).returncode == 0
    assert chunk_count(cluster) > 0
    shutil.rmtree(cluster.mnt / "snap2")
    deadline = time.monotonic() + 30
    while chunk_count(cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert chunk_count(cluster) == 0


def test_a_snapshot_ends_every_write_lease_of_many_open_writers(cluster):
    """More leased chunks than are revoked at once: writes through each
    writer's old lease after the snapshot reach the source only."""
    folder = cluster.mnt / "busy"
    folder.mkdir()
    fds = [os.open(folder / f"f{i}", os.O_CREAT | os.O_RDWR, 0o644) for i in range(80)]
    try:
        for i, fd in enumerate(fds):
            os.pwrite(fd, b"before %d" % i, 0)
            os.fsync(fd)
        cluster.dfs("snapshot", *cluster.cli_args, "/busy", "/busy-snap")
        for i, fd in enumerate(fds):
            os.pwrite(fd, b"after  %d" % i, 0)
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
    with cluster.extra_mount() as mount:
        for i in range(80):
            assert (mount / "busy-snap" / f"f{i}").read_bytes() == b"before %d" % i
            assert (mount / "busy" / f"f{i}").read_bytes() == b"after  %d" % i


def test_snapshot_refuses_what_it_cannot_do(cluster):
    (cluster.mnt / "src" / "inner").mkdir(parents=True)
    (cluster.mnt / "src" / "file").write_bytes(b"x" * 100_000)
    (cluster.mnt / "taken").mkdir()
    (cluster.mnt / "small").mkdir()
    cluster.dfs("quota", "set", *cluster.cli_args, "/small", "--bytes", "50000")

    def refused(*paths) -> str:
        done = cluster.dfs("snapshot", *cluster.cli_args, *paths, check=False)
        assert done.returncode == 1
        return done.stderr

    assert "EINVAL" in refused("/src", "/src/inner/copy")
    assert "EINVAL" in refused("/src", "/src/copy")
    assert "EEXIST" in refused("/src", "/taken")
    assert "ENOTDIR" in refused("/src/file", "/copy")
    assert "ENOENT" in refused("/missing", "/copy")
    assert "EDQUOT" in refused("/src", "/small/copy")
    assert sorted(os.listdir(cluster.mnt)) == ["small", "src", "taken"]
    assert not os.listdir(cluster.mnt / "small")
    with pytest.raises(OSError) as info:
        (cluster.mnt / "small" / "f").write_bytes(b"y" * 60_000)
    assert info.value.errno == errno.EDQUOT


def test_shared_chunks_survive_a_restart_and_a_snapshot_right_after_one_holds(cluster):
    data = cluster.mnt / "data"
    data.mkdir()
    original = random.Random(9).randbytes(2 * TEST_CHUNK_SIZE + 7)
    (data / "f").write_bytes(original)
    cluster.dfs("snapshot", *cluster.cli_args, "/data", "/before")
    cluster.local.down()
    cluster.up()

    # The references were stored: a write to the source still copies first.
    with open(data / "f", "r+b") as f:
        f.write(b"changed after the restart")
        f.flush()
        os.fsync(f.fileno())
    with cluster.extra_mount() as mount:
        assert (mount / "before" / "f").read_bytes() == original

    # Right after a restart every chunk counts as leased: the snapshot moves
    # them all first, and still holds its moment.
    cluster.local.down()
    cluster.up()
    now = (data / "f").read_bytes()
    cluster.dfs("snapshot", *cluster.cli_args, "/data", "/after")
    (data / "f").write_bytes(b"rewritten")
    with cluster.extra_mount() as mount:
        assert (mount / "after" / "f").read_bytes() == now
        assert (mount / "before" / "f").read_bytes() == original
        assert (mount / "data" / "f").read_bytes() == b"rewritten"
