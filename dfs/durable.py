"""Making what was just written survive a crash of the host."""

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Sync a folder, so that the names just made or renamed in it last."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
