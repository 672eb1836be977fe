"""Finding, checking and removing FUSE mounts of dfs on this host."""

import errno
import os
import posixpath
import subprocess

FUSE_TYPE = "fuse.dfs"


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")


def _dfs_mounts() -> list[tuple[str, str]]:
    """(mount point, the folder inside dfs it shows) of every dfs mount here;
    a mount names its folder as its source, dfs:FOLDER."""
    with open("/proc/self/mounts") as f:
        rows = [line.split() for line in f]
    return [(_unescape(row[1]), _unescape(row[0]).removeprefix("dfs:") or "/")
            for row in rows if len(row) > 2 and row[2] == FUSE_TYPE]


def dfs_mountpoints() -> list[str]:
    return [mountpoint for mountpoint, _ in _dfs_mounts()]


def inside_dfs(path: str) -> tuple[str, str] | None:
    """(the path inside dfs, the mount point) of a local path on a dfs mount
    here, or None if it is on none."""
    local = os.path.realpath(path)
    found = [(mountpoint, folder) for mountpoint, folder in _dfs_mounts()
             if local == mountpoint or local.startswith(mountpoint.rstrip("/") + "/")]
    if not found:
        return None
    mountpoint, folder = max(found, key=lambda m: len(m[0]))
    return posixpath.normpath(posixpath.join(folder, os.path.relpath(local, mountpoint))), \
        mountpoint


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in dfs_mountpoints()


def is_broken(path: str) -> bool:
    """True for a mount whose serving process is gone ('transport endpoint is
    not connected')."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def unmount(path: str, lazy: bool = False) -> None:
    """Unmount a FUSE mount; with `lazy`, detach it even while it is busy."""
    flags = "-uz" if lazy else "-u"
    result = subprocess.run(["fusermount3", flags, path], capture_output=True, text=True)
    if result.returncode != 0 and is_mounted(path):
        if lazy:
            result = subprocess.run(["umount", "-l", path], capture_output=True, text=True)
            if result.returncode == 0:
                return
        raise OSError(errno.EBUSY, f"cannot unmount {path}: {result.stderr.strip()}")
