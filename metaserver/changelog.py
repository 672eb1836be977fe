"""The metaserver's side of metadata replication: its newest commits, kept
for metaloggers to read, and whole copies of the database for a metalogger
that starts from nothing or has fallen behind them.

A metalogger (metalogger.py) keeps a copy of the database and the position of
the last commit it applied: the history and number that every commit writes
into the database itself (store.py). `read` hands it the parts of the commits
after that position, waiting a while for one when there is none yet. The
store keeps the records of the newest commits, up to `keep_bytes`, in the
database (so a metalogger goes on across a restart of the metaserver), and
only while a metalogger was heard from lately or a copy was asked for. A
metalogger whose position fell behind them, or follows another history (a
restore begins a new one), starts over from a copy (`copy`): a compacted
LMDB copy made in one read transaction, whose position it then reads on
from. One copy is kept at a time, shared by the metaloggers that need it,
and removed once none has read it for COPY_IDLE seconds.
"""

import errno
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import lmdb
import trio

from dfs import logs, transit
from dfs.errors import DfsError
from dfs.framing import MAX_DATA
from dfs.records import LogCopy

from .restore import RESTORES
from .store import DATABASES, LOG_HISTORY, LOG_SEQ, Store, log_entries

log = logs.get_logger("metaserver")

# What one read returns at most, leaving room in a frame for the envelope.
REPLY_BYTES = MAX_DATA // 2
MAX_WAIT = 30.0
COPY_IDLE = 600.0
# A metalogger asks at least every few seconds (metalogger.WAIT): one not
# heard from for SILENT_AFTER is reported, and after FORGET_AFTER no longer listed.
SILENT_AFTER = 60.0
FORGET_AFTER = 86400.0
COPY_PREFIX = "copy-"


@dataclass
class Follower:
    """A metalogger as the metaserver last heard from it."""
    name: str
    seq: int
    seen: float


class ChangeLog:
    def __init__(self, store: Store, keep_bytes: int, copy_dir: Path):
        self.store = store
        self.keep_bytes = keep_bytes
        self.copy_dir = copy_dir
        self.history = self.seq = 0
        self._grew = trio.Event()
        self.followers: dict[str, Follower] = {}
        self._copy: LogCopy | None = None
        self._copy_read = float("-inf")
        self._copying = trio.Lock()
        # Until then (monotonic), records are kept even with no metalogger heard from.
        self._keep_until = float("-inf")

    def attach(self) -> None:
        """Follow the store's commits from now on (it calls `append`). If the
        store kept records before a restart, a metalogger followed: records go
        on being kept for COPY_IDLE, the time it has to come back."""
        self.history, self.seq = self.store.position()
        self.store.log_keep = self.keep_bytes
        if self.store.log_wanted:
            self._keep_until = time.monotonic() + COPY_IDLE
        self.store.on_commit = self.append

    def _wanted(self) -> bool:
        """Whether a metalogger may read commits soon: one was heard from
        lately, or a copy was asked for (its maker reads on from it next)."""
        now = time.time()
        return (any(now - f.seen < FORGET_AFTER for f in self.followers.values())
                or time.monotonic() < max(self._keep_until, self._copy_read + COPY_IDLE))

    def append(self, seq: int) -> None:
        self.seq = seq
        self.store.log_wanted = self._wanted()
        self._grew.set()
        self._grew = trio.Event()

    def heard(self, follower: str, seq: int | None = None) -> None:
        """Note that metalogger `follower` asked for something (at `seq`)."""
        if seq is None:
            seq = self.followers[follower].seq if follower in self.followers else 0
        self.followers[follower] = Follower(follower, seq, time.time())
        self.store.log_wanted = True

    def _held(self, after: int) -> bool:
        """Whether the commits after `after` are all to be had here."""
        if after == self.seq:
            return True
        return after < self.seq and self.store.read(
            lambda tx: next(log_entries(tx, after, 0), None) is not None)

    async def read(self, follower: str, history: int, after: int, part: int,
                   wait: float) -> dict:
        """The parts after (`after`, `part`), waiting up to `wait` seconds for a
        commit if there is none yet; ESTALE if they cannot be had here."""
        self.heard(follower, after)
        self._check_history(history)
        if after == self.seq and part == 0:
            with trio.move_on_after(min(wait, MAX_WAIT) if math.isfinite(wait) and wait > 0
                                    else 0.0):
                await self._grew.wait()
            if after == self.seq:
                return {"history": self.history, "seq": self.seq, "parts": [],
                        "tables": list(DATABASES)}

        def collect(tx) -> list:
            found, size = [], 0
            for seq, index, last, data in log_entries(tx, after, part):
                if found and size + len(data) > REPLY_BYTES:
                    break
                found.append([seq, index, last, bytes(data)])
                size += len(data)
            return found
        found = self.store.read(collect)
        if not found:
            raise DfsError(errno.ESTALE, f"commit {after + 1} (part {part}) is no longer held "
                                         f"(the newest is {self.seq}): copy the database again")
        return {"history": self.history, "seq": self.seq, "parts": found,
                "crcs": [transit.crc_of(part[3]) for part in found], "tables": list(DATABASES)}

    def _check_history(self, history: int) -> None:
        if history != self.history:
            raise DfsError(errno.ESTALE, "this copy of the metadata follows another history "
                                         "(the metaserver's database was restored or "
                                         "replaced): copy the database again")

    def status(self) -> list[dict]:
        """The metaloggers heard from lately: how far behind and since when."""
        now = time.time()
        for name in [f.name for f in self.followers.values() if now - f.seen > FORGET_AFTER]:
            del self.followers[name]
        return [{"name": f.name, "seq": f.seq, "behind": max(self.seq - f.seq, 0),
                 "seen": round(now - f.seen, 1), "silent": now - f.seen > SILENT_AFTER}
                for f in self.followers.values()]

    # --- copies -------------------------------------------------------------------
    async def copy(self) -> LogCopy:
        """A copy of the database whose position this log can go on from."""
        # Hold commits from now on: the copy's maker reads on from it.
        self._copy_read = time.monotonic()
        async with self._copying:
            self.store.log_wanted = True
            current = self._copy
            if (current is None or current.history != self.history
                    or not self._held(current.seq)
                    or not (self.copy_dir / current.name).exists()):
                self._copy = await trio.to_thread.run_sync(self._make_copy)
                # Its reader needs every record after it: they are not let go
                # for the size limit alone while it reads (see Store.log_pin).
                self.store.log_pin = self._copy.seq
            self._copy_read = time.monotonic()
            return self._copy

    def _make_copy(self) -> LogCopy:
        started = time.monotonic()
        temp = self.copy_dir / ".copy.partial"
        try:
            self.copy_dir.mkdir(parents=True, exist_ok=True)
            self._check_room()
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _, (history, seq, restores) = self.store.copy_to(fd, LOG_HISTORY, LOG_SEQ,
                                                                  RESTORES)
            finally:
                os.close(fd)
            name = f"{COPY_PREFIX}{history:x}-{seq}.lmdb"
            os.replace(temp, self.copy_dir / name)
        except OSError as exc:
            raise DfsError(exc.errno or errno.EIO, f"cannot copy the database into "
                                                   f"{self.copy_dir}: {exc}") from None
        except lmdb.DiskError as exc:
            raise DfsError(errno.ENOSPC, f"no room to copy the database into "
                                         f"{self.copy_dir}: {exc}") from None
        except lmdb.Error as exc:
            raise DfsError(errno.EIO, f"cannot copy the database: {exc}") from None
        finally:
            temp.unlink(missing_ok=True)
        self._remove_copies(but=name)
        copy = LogCopy(name, (self.copy_dir / name).stat().st_size, history, seq, restores)
        log.info("database copied for metaloggers", copy=name, size=copy.size, seq=seq,
                 seconds=round(time.monotonic() - started, 2))
        return copy

    def _check_room(self) -> None:
        """ENOSPC unless the copy's folder has room for a copy with a quarter
        of it (and 64 MiB) to spare: the copy must not take the room the
        database grows into, when they share a disk."""
        size = self.store.size()
        wanted = size + size // 4 + (64 << 20)
        fs = os.statvfs(self.copy_dir)
        free = fs.f_bavail * fs.f_frsize
        if free < wanted:
            raise DfsError(errno.ENOSPC, f"no room to copy the database ({size >> 20} MiB) "
                                         f"into {self.copy_dir}: {free >> 20} MiB free, "
                                         f"{wanted >> 20} MiB wanted")

    def read_copy(self, name: str, offset: int, length: int) -> bytes:
        if self._copy is None or name != self._copy.name:
            raise DfsError(errno.ENOENT, f"no copy {name!r} (it was replaced or removed): "
                                         "ask for a new one")
        if offset < 0 or not 0 < length <= MAX_DATA:
            raise DfsError(errno.EINVAL, f"log_copy_read: offset must be >= 0 and length "
                                         f"1..{MAX_DATA}")
        self._copy_read = time.monotonic()
        try:
            with open(self.copy_dir / name, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise DfsError(errno.ENOENT, f"copy {name} was removed: ask for a new one") from None

    def _remove_copies(self, but: str | None = None) -> None:
        try:
            names = os.listdir(self.copy_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(COPY_PREFIX) and name != but:
                (self.copy_dir / name).unlink(missing_ok=True)

    async def run(self) -> None:
        """Remove copies left by an earlier run, and the current one once idle."""
        await trio.to_thread.run_sync(self._remove_copies)
        while True:
            await trio.sleep(60.0)
            async with self._copying:
                if (self._copy is not None
                        and time.monotonic() - self._copy_read > COPY_IDLE):
                    log.info("copy for metaloggers removed: unread", copy=self._copy.name)
                    self._copy = None
                    self.store.log_pin = None
                    await trio.to_thread.run_sync(self._remove_copies)
