"""Backups of the metadata, made while the metaserver serves.

All of a cluster's files hang on this one database: without it the chunk
servers hold anonymous chunks. So the metaserver copies it, every
`--backup-interval` and whenever `dfs backup now` asks, into a folder that
should sit on another disk (`--backup-dir`), keeping the newest
`--backup-keep`; `dfs backup get` takes a copy off the host.

A backup is one file, `meta-<UTC time>-<txn>.lmdb`: a compacted LMDB copy of
the database as one read transaction sees it, so it holds every change
acknowledged before that transaction began and nothing half-applied. It is
written under a temporary name, synced and renamed, so a backup that exists is
whole; `<name>.sha256` beside it (sha256sum's format) lets `sha256sum -c`, `dfs
backup get` and dfs-metaserver-restore check it. Writers go on meanwhile; the
copy only keeps the pages they free from reuse until it ends.
"""

import calendar
import errno
import hashlib
import os
import re
import threading
import time
from pathlib import Path

import lmdb
import trio

from dfs import logs
from dfs.durable import fsync_dir
from dfs.errors import DfsError
from dfs.framing import MAX_DATA
from dfs.records import BackupInfo

from .store import Store

log = logs.get_logger("metaserver")

NAME = re.compile(r"meta-(\d{8}T\d{6})Z-(\d+)\.lmdb")
HASH_SUFFIX = ".sha256"
TEMP_SUFFIX = ".partial"
READ_BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def recorded_sha256(path: Path) -> str | None:
    """The checksum in `path`'s .sha256 file, or None if there is none."""
    try:
        text = path.with_name(path.name + HASH_SUFFIX).read_text()
    except FileNotFoundError:
        return None
    return text.split()[0] if text.split() else ""


class Backups:
    def __init__(self, store: Store, folder: Path, keep: int, interval: float):
        self.store = store
        self.folder = folder
        self.keep = keep
        self.interval = interval
        self.last_error: str | None = None
        # One copy at a time: two would only slow each other down.
        self._taking = threading.Lock()

    def list(self) -> list[BackupInfo]:
        """The backups in the folder, oldest first."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []   # none yet, or the folder is unusable (take says why)
        found = [info for info in map(self._info, names) if info is not None]
        return sorted(found, key=lambda b: (b.at, b.txn))

    def _info(self, name: str) -> BackupInfo | None:
        match = NAME.fullmatch(name)
        if not match:
            return None
        path = self.folder / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None   # pruned meanwhile
        at = calendar.timegm(time.strptime(match[1], "%Y%m%dT%H%M%S"))
        return BackupInfo(name, size, at, int(match[2]), recorded_sha256(path) or "")

    def take(self) -> BackupInfo:
        """Copy the database now (blocking: run it in a thread)."""
        with self._taking:
            try:
                info = self._copy()
            except OSError as exc:
                self.last_error = f"cannot write a backup in {self.folder}: {exc}"
                raise DfsError(exc.errno or errno.EIO, self.last_error) from None
            except lmdb.DiskError as exc:
                self.last_error = f"no room for a backup in {self.folder}: {exc}"
                raise DfsError(errno.ENOSPC, self.last_error) from None
            except lmdb.Error as exc:
                self.last_error = f"cannot copy the database: {exc}"
                raise DfsError(errno.EIO, self.last_error) from None
            self.last_error = None
            self._prune()
            return info

    def _copy(self) -> BackupInfo:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        temp = self.folder / f".backup-{os.getpid()}{TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            txn_id = self.store.copy_to(fd)[0]
            name = f"meta-{stamp}Z-{txn_id}.lmdb"
            os.fsync(fd)
            os.close(fd)
            fd = -1
            hash_file = self.folder / (name + HASH_SUFFIX)
            hash_file.write_text(f"{sha256_of(temp)}  {name}\n")
            with open(hash_file, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(temp, self.folder / name)
            fsync_dir(self.folder)
        finally:
            if fd >= 0:
                os.close(fd)
            temp.unlink(missing_ok=True)
        info = self._info(name)
        log.info("metadata backed up", backup=name, size=info.size, txn=info.txn,
                 folder=str(self.folder))
        return info

    def _prune(self) -> None:
        for old in self.list()[:-self.keep]:
            path = self.folder / old.name
            path.unlink(missing_ok=True)
            path.with_name(old.name + HASH_SUFFIX).unlink(missing_ok=True)
            log.info("old metadata backup removed", backup=old.name)

    def read(self, name: str, offset: int, length: int) -> bytes:
        if not NAME.fullmatch(name):
            raise DfsError(errno.EINVAL, f"{name!r} is not the name of a backup "
                                         "(see `dfs backup ls`)")
        if offset < 0 or not 0 < length <= MAX_DATA:
            raise DfsError(errno.EINVAL, f"backup_read: offset must be >= 0 and length "
                                         f"1..{MAX_DATA}")
        try:
            with open(self.folder / name, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise DfsError(errno.ENOENT, f"no backup {name} (an old one may have been "
                                         "removed meanwhile: see `dfs backup ls`)") from None

    async def run(self) -> None:
        """Take a backup every `interval` seconds (none if it is 0)."""
        if not self.interval:
            return
        while True:
            await trio.sleep(self.interval)
            try:
                await trio.to_thread.run_sync(self.take)
            except DfsError as exc:
                log.error("metadata backup failed", error=exc.message, folder=str(self.folder))
