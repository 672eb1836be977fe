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


def replace_file(path: Path, data: bytes) -> None:
    """Put `data` at `path` whole: written and synced under a temporary name,
    then renamed over it, so a crash leaves the old contents or the new."""
    path = Path(path)
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)
