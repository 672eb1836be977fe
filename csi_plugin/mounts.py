"""Mounts on the node: the kernel's mount table, FUSE mounts of dfs, bind mounts.

A staged volume is a `dfs mount --subdir /volumes/<id>` at the staging path;
that command returns once the mount is live and leaves the FUSE process
running detached, so the mount outlives the plugin. A published volume is a
bind mount of the staging path at the pod's target path.

When the FUSE process dies the kernel keeps the mount but every access fails
with ENOTCONN ('transport endpoint is not connected'); such a mount is
"broken" and is repaired by a lazy unmount and a fresh mount.
"""

import errno
import os
import subprocess
from dataclasses import dataclass

import grpc

from dfs import logs

from . import nodemetrics
from .errors import CsiError, precondition

log = logs.get_logger("csi.mounts")

MOUNTINFO = "/proc/self/mountinfo"
# dfs mount waits for the metaserver before it returns; bound it so a dead
# cluster fails the RPC (the CO retries) instead of holding it forever.
MOUNT_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 30.0
# Mounts stacked at one target path (each repair adds one) that
# unpublishing will peel off.
MAX_STACKED = 64


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    root: str
    fstype: str
    source: str
    options: frozenset


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table() -> list[MountEntry]:
    entries = []
    with open(MOUNTINFO) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            entries.append(MountEntry(mountpoint=_unescape(fields[4]), root=_unescape(fields[3]),
                                      fstype=tail[0], source=_unescape(tail[1]),
                                      options=frozenset(fields[5].split(","))))
    return entries


def mounted_at(path: str) -> MountEntry | None:
    """The topmost mount whose mountpoint is `path`, or None."""
    path = os.path.normpath(path)
    found = None
    for entry in mount_table():
        if entry.mountpoint == path:
            found = entry
    return found


def broken(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def exists(path: str) -> bool:
    """True if something (even a broken mount) is at `path`."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def _run(argv: list[str], timeout: float, doing: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CsiError(grpc.StatusCode.UNAVAILABLE,
                       f"{doing}: {argv[0]} took more than {timeout:.0f}s") from None
    except OSError as exc:
        raise CsiError(grpc.StatusCode.INTERNAL, f"{doing}: cannot run {argv[0]}: "
                                                 f"{exc.strerror}") from None
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise CsiError(grpc.StatusCode.INTERNAL,
                       f"{doing}: {' '.join(argv[:2])} failed: {reason}")


class Mounter:
    """Runs the mount commands with the plugin's cluster settings."""

    def __init__(self, dfs_command: list[str], meta: str, secret_file: str | None,
                 log_dir: str | None, cluster: int = 0, metrics_dir: str | None = None,
                 zone: str = ""):
        self.dfs_command = dfs_command
        self.meta = meta
        self.secret_file = secret_file
        self.log_dir = log_dir
        self.cluster = cluster
        # Where each mount serves its metrics for the node plugin (nodemetrics.py).
        self.metrics_dir = metrics_dir
        # The mounts read from replicas in this zone first ("": none).
        self.zone = zone

    def mount_volume(self, subdir: str, path: str, volume_id: str,
                     read_cache_mib: int | None = None, epoch: int = 0,
                     xattrs: bool = True) -> None:
        argv = [*self.dfs_command, "mount", "--meta", self.meta, "--subdir", subdir]
        if read_cache_mib:
            argv += ["--read-cache", str(read_cache_mib)]
        if not xattrs:
            argv.append("--no-xattrs")
        if epoch:
            argv += ["--epoch", str(epoch)]
        if self.secret_file:
            argv += ["--secret-file", self.secret_file]
        if self.cluster:
            argv += ["--cluster-id", f"{self.cluster:x}"]
        if self.zone:
            argv += ["--zone", self.zone]
        if self.metrics_dir:
            argv += ["--metrics-socket", nodemetrics.socket_path(self.metrics_dir, volume_id)]
        if self.log_dir:
            argv += ["--log-file", os.path.join(self.log_dir, f"mount-{volume_id}.log")]
        os.makedirs(path, exist_ok=True)
        _run(argv + [path], MOUNT_TIMEOUT, f"mounting volume {volume_id} at {path}")
        log.info("volume mounted", volume=volume_id, path=path, read_cache_mib=read_cache_mib,
                 epoch=epoch, xattrs=xattrs)

    def unmount_volume(self, path: str, volume_id: str) -> None:
        """Unmount the FUSE mount at `path`; lazily if it is broken or busy."""
        try:
            _run([*self.dfs_command, "umount", path], UMOUNT_TIMEOUT,
                 f"unmounting volume {volume_id} at {path}")
        except CsiError as exc:
            log.warning("unmount failed, detaching lazily", volume=volume_id, path=path,
                        reason=exc.message)
            _run([*self.dfs_command, "umount", "--lazy", path], UMOUNT_TIMEOUT,
                 f"lazily unmounting volume {volume_id} at {path}")
        log.info("volume unmounted", volume=volume_id, path=path)

    @staticmethod
    def bind(source: str, target: str, flags: list[str]) -> None:
        if not exists(target):
            os.makedirs(target)
        _run(["mount", "--bind", source, target], UMOUNT_TIMEOUT,
             f"bind-mounting {source} at {target}")
        if flags:
            _run(["mount", "-o", ",".join(["remount", "bind", *flags]), target],
                 UMOUNT_TIMEOUT, f"applying {flags} to {target}")

    @staticmethod
    def unbind(target: str) -> None:
        """Unmount every mount stacked at `target`, lazily if need be."""
        for _ in range(MAX_STACKED):
            if mounted_at(target) is None:
                return
            try:
                _run(["umount", target], UMOUNT_TIMEOUT, f"unmounting {target}")
            except CsiError:
                _run(["umount", "--lazy", target], UMOUNT_TIMEOUT, f"detaching {target}")
        raise CsiError(grpc.StatusCode.INTERNAL,
                       f"{target} is still mounted after {MAX_STACKED} unmounts")

    @staticmethod
    def remove_mountpoint(path: str) -> None:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise precondition(f"cannot remove {path} after unmounting it: "
                               f"{exc.strerror}") from None
