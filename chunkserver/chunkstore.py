"""The folder of replicas: where each chunk's files live, creating, finding,
removing and installing replicas. Every method does blocking I/O; callers run
them in worker threads and serialise them per chunk.

Layout: DATA_DIR/chunks/LL/HH/<chunk id as 16 hex digits>.data and .meta,
where LL and HH are the id's lowest two bytes. Chunk ids are handed out in
sequence, so the low bytes spread them evenly over 65536 folders.
"""

import os
import re
import tempfile
from array import array
from pathlib import Path

from dfs import logs
from dfs.durable import fsync_dir

from .chunkfile import (BLOCK, CRC_OFFSET, ZERO_BLOCK, ChunkFile, HeaderError, block_crc,
                        crcs_to_bytes, decode_header, encode_header, pwrite_all)

log = logs.get_logger("chunkserver")

DATA_SUFFIX = ".data"
META_SUFFIX = ".meta"
TEMP_SUFFIX = ".tmp"

# Filesystems that overwrite an allocated block in place, so that writing out
# a file's pages and a cache flush make them durable (see chunkfile, "sync").
# Copy-on-write ones (btrfs, zfs) move every write and need each file synced.
IN_PLACE_FILESYSTEMS = frozenset({"ext4", "xfs"})


# mountinfo writes space, tab, newline and backslash in paths as \ooo.
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path` ("" if it cannot be told),
    from the deepest mount point above it in /proc/self/mountinfo."""
    target = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            for line in table:
                mount_part, _, fs_part = line.partition(" - ")
                fields, fs_fields = mount_part.split(), fs_part.split()
                if len(fields) < 5 or not fs_fields:
                    continue
                point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fs_fields[0]
    except OSError:
        return ""
    return kind


class ChunkStore:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "chunks"
        self.in_place = filesystem_type(self.data_dir) in IN_PLACE_FILESYSTEMS

    def folder(self, chunk: int) -> Path:
        return self.root / f"{chunk & 0xff:02x}" / f"{(chunk >> 8) & 0xff:02x}"

    def paths(self, chunk: int) -> tuple[Path, Path]:
        base = self.folder(chunk) / f"{chunk:016x}"
        return base.with_suffix(DATA_SUFFIX), base.with_suffix(META_SUFFIX)

    def _make_folder(self, chunk: int) -> Path:
        """The chunk's folder, created durably (parents fsynced) if missing."""
        folder = self.folder(chunk)
        if not folder.is_dir():
            for path in (self.root, folder.parent, folder):
                if not path.is_dir():
                    path.mkdir(exist_ok=True)
                    fsync_dir(path.parent)
        return folder

    def scan(self) -> dict[int, int]:
        """Return {chunk: version} of every replica on disk, removing what a crash
        left half made: temporary files, data files without metadata, and
        replicas whose header is unreadable."""
        self.root.mkdir(parents=True, exist_ok=True)
        found = {}
        for folder in self.root.glob("*/*"):
            for entry in os.scandir(folder):
                path = Path(entry.path)
                if path.suffix == TEMP_SUFFIX:
                    path.unlink()
                    continue
                try:
                    chunk = int(path.stem, 16)
                except ValueError:
                    continue
                data_path, meta_path = self.paths(chunk)
                if path.suffix == DATA_SUFFIX and not meta_path.exists():
                    log.warning("removing orphan data file", chunk=chunk, path=str(path))
                    path.unlink(missing_ok=True)
                elif path.suffix == META_SUFFIX:
                    try:
                        if not data_path.exists():
                            raise HeaderError("its data file is missing")
                        with open(meta_path, "rb") as f:
                            found[chunk] = decode_header(f.read(CRC_OFFSET), chunk)
                    except HeaderError as exc:
                        log.error("removing a damaged replica", chunk=chunk, reason=str(exc))
                        meta_path.unlink()
                        data_path.unlink(missing_ok=True)
        return found

    def open(self, chunk: int) -> ChunkFile:
        """Open an existing replica; FileNotFoundError if there is none."""
        data_path, meta_path = self.paths(chunk)
        return ChunkFile.open(chunk, str(data_path), str(meta_path), self.in_place)

    def create(self, chunk: int, version: int) -> ChunkFile:
        """Make an empty replica, durable before it is returned."""
        folder = self._make_folder(chunk)
        data_path, meta_path = self.paths(chunk)
        fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.close(fd)
        temp = _write_meta_temp(folder, chunk, version, b"")
        os.replace(temp, meta_path)
        fsync_dir(folder)
        return self.open(chunk)

    def exists(self, chunk: int) -> bool:
        return all(path.exists() for path in self.paths(chunk))

    def delete(self, chunk: int) -> bool:
        """Remove a replica (metadata first: without it the data is an orphan)."""
        data_path, meta_path = self.paths(chunk)
        try:
            meta_path.unlink()
        except FileNotFoundError:
            return False
        data_path.unlink(missing_ok=True)
        return True

    def builder(self, chunk: int) -> "ReplicaBuilder":
        return ReplicaBuilder(chunk, self._make_folder(chunk), *self.paths(chunk))

    def usage(self) -> tuple[int, int]:
        """(capacity, used) in bytes of the filesystem holding the data."""
        st = os.statvfs(self.data_dir)
        return st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bavail) * st.f_frsize


def _write_meta_temp(folder: Path, chunk: int, version: int, crcs: bytes) -> str:
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f"{chunk:016x}.", suffix=TEMP_SUFFIX)
    try:
        pwrite_all(fd, encode_header(chunk, version), 0)
        pwrite_all(fd, crcs, CRC_OFFSET)
        os.fsync(fd)
    except BaseException:
        os.unlink(temp)
        raise
    finally:
        os.close(fd)
    return temp


class ReplicaBuilder:
    """A whole replica assembled under a temporary name, then installed at once.

    Pieces arrive in order from offset 0, each a whole number of blocks except
    the last; blocks of zeros are not written, so holes stay holes.
    """

    def __init__(self, chunk: int, folder: Path, data_path: Path, meta_path: Path):
        self.chunk = chunk
        self.folder = folder
        self.data_path = data_path
        self.meta_path = meta_path
        fd, self.data_temp = tempfile.mkstemp(dir=folder, prefix=f"{chunk:016x}.",
                                              suffix=TEMP_SUFFIX)
        self.fd = fd
        self.meta_temp: str | None = None
        self.crcs = array("I")
        self.length = 0

    def put(self, offset: int, data) -> None:
        if offset != self.length or offset % BLOCK:
            raise ValueError(f"replica pieces must arrive in order, got offset {offset}")
        view = memoryview(data)
        for start in range(0, len(view), BLOCK):
            block = view[start:start + BLOCK]
            self.crcs.append(block_crc(block))
            if block.tobytes() != ZERO_BLOCK[:len(block)]:
                pwrite_all(self.fd, block, offset + start)
        self.length += len(view)

    def complete(self, version: int) -> None:
        """Make the replica durable under its temporary names."""
        os.ftruncate(self.fd, self.length)
        os.fsync(self.fd)
        self.meta_temp = _write_meta_temp(self.folder, self.chunk, version,
                                          crcs_to_bytes(self.crcs))

    def install(self) -> None:
        """Replace any replica of the chunk with this one. The old metadata goes
        first, so a crash midway leaves no replica rather than a mixed one."""
        self.meta_path.unlink(missing_ok=True)
        os.replace(self.data_temp, self.data_path)
        os.replace(self.meta_temp, self.meta_path)
        os.close(self.fd)
        self.fd = -1
        self.data_temp = self.meta_temp = None
        fsync_dir(self.folder)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for temp in (self.data_temp, self.meta_temp):
            if temp:
                Path(temp).unlink(missing_ok=True)
