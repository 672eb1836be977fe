"""POSIX behaviour of a dfs mount, checked with the same calls programs make."""

import ctypes
import errno
import fcntl
import mmap
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_metrics import free_port, scrape

libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def renameat2(old, new, flags):
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def expect_errno(code, fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {info.value}"


def write_file(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_create_write_read_stat(mnt):
    path = mnt / "hello.txt"
    write_file(path, b"hello world\n")
    assert read_file(path) == b"hello world\n"
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 12
    assert st.st_nlink == 1
    assert st.st_uid == os.getuid()
    assert "hello.txt" in os.listdir(mnt)


def test_errno_values(mnt):
    expect_errno(errno.ENOENT, os.stat, mnt / "missing")
    expect_errno(errno.ENOENT, os.open, mnt / "missing" / "x", os.O_RDONLY)
    write_file(mnt / "file", b"x")
    expect_errno(errno.ENOTDIR, os.stat, mnt / "file" / "x")
    expect_errno(errno.ENOTDIR, os.mkdir, mnt / "file" / "x")
    expect_errno(errno.EEXIST, os.mkdir, mnt / "file")
    os.mkdir(mnt / "dir")
    expect_errno(errno.EISDIR, os.open, mnt / "dir", os.O_WRONLY)
    expect_errno(errno.EISDIR, os.unlink, mnt / "dir")
    expect_errno(errno.ENOTDIR, os.rmdir, mnt / "file")
    write_file(mnt / "dir" / "inner", b"")
    expect_errno(errno.ENOTEMPTY, os.rmdir, mnt / "dir")
    expect_errno(errno.ENAMETOOLONG, os.open, mnt / ("a" * 256), os.O_CREAT | os.O_WRONLY)
    fd = os.open(mnt / ("b" * 255), os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    expect_errno(errno.EEXIST, os.open, mnt / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_mkdir_rmdir_nlink(mnt):
    os.mkdir(mnt / "d", 0o750)
    st = os.stat(mnt / "d")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_nlink == 2
    os.mkdir(mnt / "d" / "sub")
    assert os.stat(mnt / "d").st_nlink == 3
    os.rmdir(mnt / "d" / "sub")
    assert os.stat(mnt / "d").st_nlink == 2
    os.rmdir(mnt / "d")
    assert not os.path.exists(mnt / "d")


def test_rename_variants(mnt):
    write_file(mnt / "a", b"A")
    write_file(mnt / "b", b"B")
    os.rename(mnt / "a", mnt / "b")
    assert read_file(mnt / "b") == b"A" and not os.path.exists(mnt / "a")
    write_file(mnt / "c", b"C")
    expect_errno(errno.EEXIST, renameat2, mnt / "c", mnt / "b", RENAME_NOREPLACE)
    renameat2(mnt / "c", mnt / "b", RENAME_EXCHANGE)
    assert read_file(mnt / "b") == b"C" and read_file(mnt / "c") == b"A"
    expect_errno(errno.ENOENT, renameat2, mnt / "c", mnt / "nothing", RENAME_EXCHANGE)
    os.makedirs(mnt / "x" / "y")
    os.mkdir(mnt / "z")
    write_file(mnt / "x" / "y" / "f", b"F")
    os.rename(mnt / "x" / "y", mnt / "z" / "y")
    assert read_file(mnt / "z" / "y" / "f") == b"F"
    assert os.stat(mnt / "x").st_nlink == 2 and os.stat(mnt / "z").st_nlink == 3
    expect_errno(errno.EINVAL, os.rename, mnt / "z", mnt / "z" / "y" / "inside")
    os.mkdir(mnt / "empty")
    os.rename(mnt / "empty", mnt / "x")
    expect_errno(errno.ENOTEMPTY, os.rename, mnt / "x", mnt / "z")
    expect_errno(errno.EISDIR, os.rename, mnt / "b", mnt / "z")
    expect_errno(errno.ENOTDIR, os.rename, mnt / "z", mnt / "b")


def test_hard_links_and_symlinks(mnt):
    write_file(mnt / "orig", b"shared")
    os.link(mnt / "orig", mnt / "alias")
    assert os.stat(mnt / "orig").st_nlink == 2
    assert os.stat(mnt / "orig").st_ino == os.stat(mnt / "alias").st_ino
    write_file(mnt / "alias", b"changed")
    assert read_file(mnt / "orig") == b"changed"
    os.unlink(mnt / "orig")
    assert os.stat(mnt / "alias").st_nlink == 1
    os.mkdir(mnt / "dir")
    expect_errno(errno.EPERM, os.link, mnt / "dir", mnt / "dirlink")
    os.symlink("alias", mnt / "sym")
    assert os.readlink(mnt / "sym") == "alias"
    assert stat.S_ISLNK(os.lstat(mnt / "sym").st_mode)
    assert os.lstat(mnt / "sym").st_size == len("alias")
    assert read_file(mnt / "sym") == b"changed"
    os.symlink("/nowhere/at/all", mnt / "dangling")
    expect_errno(errno.ENOENT, os.stat, mnt / "dangling")


def test_special_files(mnt):
    os.mkfifo(mnt / "fifo", 0o600)
    assert stat.S_ISFIFO(os.stat(mnt / "fifo").st_mode)
    os.mknod(mnt / "sock", stat.S_IFSOCK | 0o600)
    assert stat.S_ISSOCK(os.stat(mnt / "sock").st_mode)
    os.mknod(mnt / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    st = os.stat(mnt / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    os.mknod(mnt / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    assert stat.S_ISBLK(os.stat(mnt / "blk").st_mode)


def test_attributes_and_times(mnt):
    path = mnt / "attrs"
    write_file(path, b"data")
    os.chmod(path, 0o640)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    os.chown(path, 1234, 5678)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(path, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(path)
    assert st.st_atime_ns == 1_000_000_123 and st.st_mtime_ns == 2_000_000_456
    before = os.stat(path).st_ctime_ns
    time.sleep(0.01)
    os.chmod(path, 0o600)
    assert os.stat(path).st_ctime_ns > before
    dir_before = os.stat(mnt).st_mtime_ns
    time.sleep(0.01)
    write_file(mnt / "newfile", b"")
    assert os.stat(mnt).st_mtime_ns > dir_before
    mtime = os.stat(path).st_mtime_ns
    time.sleep(0.01)
    with open(path, "ab") as f:
        f.write(b"more")
    assert os.stat(path).st_mtime_ns > mtime


def test_times_set_on_an_open_file_outlast_its_writes(mnt):
    """cp -p and tar set the times on the open copy after writing it."""
    path = mnt / "copy"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x" * 100_000)
        os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
        os.write(fd, b"tail")
        os.utime(fd, ns=(3_000_000_000, 4_000_000_000))
    finally:
        os.close(fd)
    st = os.stat(path)
    assert (st.st_size, st.st_mtime_ns) == (100_004, 4_000_000_000)
    source = mnt / "source"
    write_file(source, b"preserved")
    os.utime(source, ns=(5_000_000_000, 6_000_000_000))
    subprocess.run(["cp", "-p", str(source), str(mnt / "cp-copy")], check=True, timeout=30)
    assert os.stat(mnt / "cp-copy").st_mtime_ns == 6_000_000_000
    assert read_file(mnt / "cp-copy") == b"preserved"


def test_xattrs(mnt):
    path = mnt / "x"
    write_file(path, b"")
    os.setxattr(path, "user.color", b"blue")
    os.setxattr(path, "user.empty", b"")
    assert os.getxattr(path, "user.color") == b"blue"
    assert os.getxattr(path, "user.empty") == b""
    assert sorted(os.listxattr(path)) == ["user.color", "user.empty"]
    os.removexattr(path, "user.color")
    expect_errno(errno.ENODATA, os.getxattr, path, "user.color")
    expect_errno(errno.ENODATA, os.removexattr, path, "user.color")



def _getxattr_requests(samples: dict) -> float:
    return sum(value for name, value in samples.items()
               if name.startswith('dfs_fuse_requests_total{op="getxattr"'))


def _small_writes(path, count: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(count):
            os.pwrite(fd, os.urandom(4096), (i * 7 % count) * 4096)
    finally:
        os.close(fd)


def test_a_mount_without_xattrs_refuses_them_and_is_not_asked_before_writes(
        shared_cluster, mnt):
    write_file(mnt / "kept", b"")
    os.setxattr(mnt / "kept", "user.color", b"blue")
    plain_port, bare_port = free_port(), free_port()
    plain = shared_cluster.mount(f"/{mnt.name}", "--metrics-listen", f"127.0.0.1:{plain_port}")
    bare = shared_cluster.mount(f"/{mnt.name}", "--no-xattrs",
                                "--metrics-listen", f"127.0.0.1:{bare_port}")
    try:
        # Before each write the kernel asks for security.capability, unless
        # the mount has told it that it serves no extended attributes.
        _small_writes(plain / "a", 64)
        _small_writes(bare / "b", 64)
        plain_samples, bare_samples = scrape(plain_port), scrape(bare_port)
        assert _getxattr_requests(plain_samples) >= 64
        assert _getxattr_requests(bare_samples) <= 1
        assert bare_samples['dfs_fuse_request_seconds_count{op="write"}'] >= 64
        assert read_file(plain / "b") == read_file(bare / "b")
        for call, args in ((os.getxattr, ("user.color",)), (os.setxattr, ("user.color", b"red")),
                           (os.listxattr, ()), (os.removexattr, ("user.color",))):
            expect_errno(errno.EOPNOTSUPP, call, bare / "kept", *args)
    finally:
        shared_cluster.unmount(plain)
        shared_cluster.unmount(bare)
    # What the other mounts serve is untouched.
    assert os.getxattr(mnt / "kept", "user.color") == b"blue"

def test_truncate_and_sparse(mnt):
    path = mnt / "sparse"
    with open(path, "wb") as f:
        f.seek(3 * 1024 * 1024 + 17)
        f.write(b"tail")
    data = read_file(path)
    assert len(data) == 3 * 1024 * 1024 + 21
    assert data[:-4] == bytes(len(data) - 4) and data[-4:] == b"tail"
    st = os.stat(path)
    assert st.st_blocks * 512 < st.st_size, "a whole-chunk hole is not counted as stored"
    write_file(mnt / "t", b"0123456789" * 1000)
    os.truncate(mnt / "t", 5)
    assert read_file(mnt / "t") == b"01234"
    os.truncate(mnt / "t", 20)
    assert read_file(mnt / "t") == b"01234" + bytes(15)
    with open(mnt / "t", "r+b") as f:
        f.truncate(2)
        f.seek(0, os.SEEK_END)
        f.write(b"Z")
    assert read_file(mnt / "t") == b"01Z"


def test_open_flags(mnt):
    path = mnt / "flags"
    write_file(path, b"first")
    with open(path, "ab") as f:
        f.write(b"+second")
    assert read_file(path) == b"first+second"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.close(fd)
    assert read_file(path) == b"new"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"!")
    os.close(fd)
    assert read_file(path) == b"new!"


def test_mmap_read_and_shared_write(mnt):
    path = mnt / "mapped"
    write_file(path, b"a" * 8192 + b"b" * 8192)
    with open(path, "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as m:
            assert m[8190:8194] == b"aabb"
            m[0:5] = b"HELLO"
            m.flush()
    assert read_file(path)[:6] == b"HELLOa"


def test_locks_are_local_locks(mnt):
    path = mnt / "lockfile"
    write_file(path, b"")
    with open(path, "r+b") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        probe = subprocess.run(
            [sys.executable, "-c",
             "import fcntl,sys; f=open(sys.argv[1],'rb')\n"
             "try:\n fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\n"
             "except BlockingIOError: print('blocked')", str(path)],
            capture_output=True, text=True, timeout=30)
        assert probe.stdout.strip() == "blocked"
        fcntl.lockf(holder, fcntl.LOCK_EX)
        fcntl.lockf(holder, fcntl.LOCK_UN)


def test_permissions_enforced(mnt):
    os.mkdir(mnt / "private", 0o700)
    write_file(mnt / "private" / "secret", b"s")
    os.chmod(mnt / "private" / "secret", 0o600)
    probe = subprocess.run(
        [sys.executable, "-c",
         "import os,sys; os.setgid(65534); os.setuid(65534)\n"
         "try:\n open(sys.argv[1],'rb')\nexcept PermissionError: print('denied')",
         str(mnt / "private" / "secret")], capture_output=True, text=True, timeout=30)
    assert probe.stdout.strip() == "denied", probe.stderr


def test_unlinked_open_file_keeps_data(mnt):
    path = mnt / "doomed"
    write_file(path, b"still here" * 1000)
    with open(path, "r+b") as f:
        os.unlink(path)
        assert not os.path.exists(path)
        assert f.read() == b"still here" * 1000
        f.write(b"after unlink")
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        assert f.read().endswith(b"after unlink")


def test_unlinked_file_open_on_another_mount(shared_cluster, mnt):
    write_file(mnt / "shared", b"x" * 100_000)
    with shared_cluster.extra_mount() as other, open(other / mnt.name / "shared", "rb") as f:
        os.unlink(mnt / "shared")
        time.sleep(0.1)
        assert f.read() == b"x" * 100_000


def test_many_files_in_one_directory(mnt):
    folder = mnt / "many"
    os.mkdir(folder)
    names = {f"file-{i:05d}" for i in range(10_000)}

    def create(name):
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o644))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, names))
    assert set(os.listdir(folder)) == names
    assert os.stat(folder / "file-09999").st_size == 0


def test_readdir_stable_under_concurrent_change(mnt):
    folder = mnt / "churn"
    os.mkdir(folder)
    for i in range(1000):
        os.close(os.open(folder / f"keep-{i}", os.O_CREAT | os.O_WRONLY))
    seen = []
    with os.scandir(folder) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i % 50 == 0:
                os.close(os.open(folder / f"new-{i}", os.O_CREAT | os.O_WRONLY))
                victim = folder / f"keep-{999 - i // 50}"
                if victim.name not in seen:
                    os.unlink(victim)
    kept = [n for n in seen if n.startswith("keep-")]
    assert len(kept) == len(set(kept)), "an entry was returned twice"
    survivors = {n for n in os.listdir(folder) if n.startswith("keep-")}
    assert survivors <= set(kept), "an entry that existed throughout was skipped"


def test_statfs_reports_space(mnt):
    st = os.statvfs(mnt)
    assert st.f_blocks > 0 and st.f_bsize > 0
    assert 0 <= st.f_bavail <= st.f_blocks
    assert st.f_namemax == 255
