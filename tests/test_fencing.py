"""Fencing through real mounts: once a folder is fenced again, a mount of the
older attachment epoch can neither change it nor land the writes it has on
their way, so it cannot overwrite what the new holder writes."""

import errno
import mmap
import os

import pytest

pytestmark = pytest.mark.timeout(180)

SIZE = 256 * 1024


def fence(cluster, path: str) -> int:
    return int(cluster.dfs("fence", *cluster.cli_args, "--quiet", path).stdout)


def read_direct(path, length: int) -> bytes:
    """Read past every cache, as a database does."""
    buf = mmap.mmap(-1, length)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        got = os.preadv(fd, [buf], 0)
    finally:
        os.close(fd)
    return bytes(buf[:got])


def refused(change) -> int:
    with pytest.raises(OSError) as caught:
        change()
    return caught.value.errno


def test_a_fenced_mount_cannot_overwrite_the_new_holder_and_still_reads(cluster):
    (cluster.mnt / "db").mkdir()
    first = fence(cluster, "/db")
    old = cluster.mount("/db", "--epoch", str(first))
    (old / "dir").mkdir()
    (old / "other").write_bytes(b"other")
    fd = os.open(old / "table", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"A" * SIZE, 0)
        # The old mount now holds a write lease on the table's chunk, which it
        # would go on using for seconds without asking the metaserver again.
        os.fsync(fd)

        second = fence(cluster, "/db")
        assert second == first + 1
        new = cluster.mount("/db", "--epoch", str(second))
        with open(new / "table", "r+b") as f:
            f.write(b"B" * SIZE)
            f.flush()
            os.fsync(f.fileno())

        os.pwrite(fd, b"a" * SIZE, 0)
        assert refused(lambda: os.fsync(fd)) == errno.EROFS
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            assert exc.errno == errno.EROFS

    assert refused(lambda: (old / "new").write_bytes(b"x")) == errno.EROFS
    assert refused(lambda: (old / "dir2").mkdir()) == errno.EROFS
    assert refused(lambda: os.unlink(old / "other")) == errno.EROFS
    assert refused(lambda: os.rmdir(old / "dir")) == errno.EROFS
    assert refused(lambda: os.rename(old / "other", old / "renamed")) == errno.EROFS
    assert refused(lambda: os.truncate(old / "table", 0)) == errno.EROFS
    assert refused(lambda: os.chmod(old / "table", 0o600)) == errno.EROFS
    assert refused(lambda: os.setxattr(old / "table", "user.k", b"v")) == errno.EROFS
    assert refused(lambda: os.symlink("table", old / "link")) == errno.EROFS
    assert refused(lambda: os.link(old / "table", old / "hard")) == errno.EROFS

    # Both mounts read what the new holder wrote, and it goes on changing.
    assert read_direct(old / "table", SIZE) == b"B" * SIZE
    assert read_direct(new / "table", SIZE) == b"B" * SIZE
    assert sorted(os.listdir(new)) == ["dir", "other", "table"]
    (new / "more").write_bytes(b"ok")
    os.rename(new / "other", new / "renamed")
    assert (old / "more").read_bytes() == b"ok"

    # A mount of the old epoch is refused from the start.
    late = cluster.base / "late"
    late.mkdir()
    cluster.extra_mounts.append(late)
    again = cluster.dfs("mount", *cluster.cli_args, "--subdir", "/db", "--epoch", str(first),
                        str(late), check=False)
    assert again.returncode != 0
    assert "epoch" in again.stderr


def test_mounts_without_an_epoch_are_not_fenced(cluster):
    (cluster.mnt / "shared").mkdir()
    plain = cluster.mount("/shared")
    fence(cluster, "/shared")
    (plain / "f").write_bytes(b"still mine")
    assert (cluster.mnt / "shared" / "f").read_bytes() == b"still mine"
