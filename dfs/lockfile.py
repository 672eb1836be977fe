"""One server process per data folder: an exclusive lock it holds while it runs."""

import errno
import fcntl
import os
from pathlib import Path

from .errors import DfsError


def lock_folder(folder: Path, name: str, what: str) -> int:
    """Take FOLDER/NAME for as long as the returned descriptor is open, with
    this process's pid in it, or raise EBUSY naming the process that holds
    it. `what` says who serves the folder, for that message."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DfsError(errno.EBUSY, f"{folder} is in use by another {what} (pid {holder}); "
                                    "stop that one first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
