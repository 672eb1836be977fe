"""Statahead: the attributes of a folder's next entries, fetched before a
lookup asks for them.

A program that stats, renames or removes a folder's files one by one in the
order they were made (a list of names from an earlier run, rsync's file list,
mdtest) pays one metaserver round trip per name for the lookup alone. When a
mount's lookups in one folder walk forward through the folder's readdir
offsets, the entries after them are fetched with their attributes, one readdir
at a time, the next while the last is being used, and the lookups that follow
are answered here. A walk's first readdir asks for FIRST_BATCH entries and each
next one for twice as many, up to BATCH: a short walk (two files stat'ed side
by side) costs the metaserver little more than its lookups would have.

An answer from here is as fresh as one the kernel would have kept: it is given
at most `timeout` after its fetch was sent, and with the rest of that time as
its timeout. Each entry is given out once (the kernel keeps it from then on).
Only names are answered, never their absence, so a file another mount made is
always found. This mount's own changes drop what they make stale, also from
fetches still on their way: a changed name (forget_name) and an inode whose
attributes changed (forget_inode). A file with more than one link is not kept,
so that no change through one of its names can leave another stale.

Memory: what a walk has passed is dropped at its next readdir, so a folder
keeps about two readdirs' worth; all folders together keep at most MAX_ENTRIES
entries (a few hundred bytes each) and MAX_FOLDERS folders.
"""

import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from . import logs
from .errors import DfsError

log = logs.get_logger("client")

FIRST_BATCH = 16
BATCH = 256
# Lookups at most this far apart in readdir order count as walking forward.
STRIDE = 16
MAX_ENTRIES = 8192
MAX_FOLDERS = 256

Fetch = Callable[[int, int, int], Awaitable[dict]]


@dataclass(slots=True)
class _Kept:
    wire: dict
    offset: int
    sent: float


@dataclass(slots=True)
class _Folder:
    names: dict[bytes, _Kept] = field(default_factory=dict)
    # Readdir offset of the last entry looked up; what is kept lies after
    # `start`, up to `end`.
    last: int = -1
    start: int = 0
    end: int = 0
    # When the newest fetch was sent: a timeout after it, nothing kept is fresh.
    sent: float = float("-inf")
    eof: bool = False
    fetching: bool = False
    # Entries the walk's last readdir asked for.
    batch: int = FIRST_BATCH


class Statahead:
    def __init__(self, fetch: Fetch, nursery: trio.Nursery, timeout: float):
        """`fetch(folder, offset, limit)` is a readdir on the metaserver."""
        self._fetch = fetch
        self._nursery = nursery
        self._timeout = timeout
        self._folders: OrderedDict[int, _Folder] = OrderedDict()
        self._where: dict[int, tuple[int, bytes]] = {}
        # Per fetch on its way: the names and inodes changed since it was sent.
        self._flights: dict[int, set] = {}
        self._next_flight = 0

    def __len__(self) -> int:
        """How many entries are kept, in all folders."""
        return len(self._where)

    def answer(self, parent: int, name: bytes) -> tuple[dict, float] | None:
        """The attributes of `name` in `parent` and how long they may be kept,
        if fetched ahead and still fresh; each is answered once."""
        folder = self._folders.get(parent)
        if folder is None:
            return None
        kept = folder.names.pop(name, None)
        if kept is None:
            return None
        del self._where[kept.wire["ino"]]
        now = trio.current_time()
        if now - folder.sent >= self._timeout:
            self._expire(folder)
        remaining = kept.sent + self._timeout - now
        if remaining <= 0:
            return None
        self._folders.move_to_end(parent)
        self._walked(parent, folder, kept.offset)
        return kept.wire, remaining

    def looked_up(self, parent: int, wire: dict) -> None:
        """Note a lookup the metaserver answered; `wire` is its reply."""
        offset = wire.get("offset")
        if offset is None:
            return
        folder = self._folders.get(parent)
        if folder is None:
            folder = self._folders[parent] = _Folder()
            while len(self._folders) > MAX_FOLDERS:
                self._drop_folder(next(iter(self._folders)))
        else:
            self._folders.move_to_end(parent)
        if trio.current_time() - folder.sent >= self._timeout:
            self._expire(folder)
        if folder.last < offset <= folder.last + STRIDE:
            self._walked(parent, folder, offset)
        folder.last = offset

    def forget_name(self, parent: int, name: bytes) -> None:
        """This mount changed what `name` in `parent` is."""
        for changed in self._flights.values():
            changed.add((parent, name))
        self._unkeep_name(parent, name)

    def forget_inode(self, ino: int) -> None:
        """This mount changed the attributes of `ino`."""
        for changed in self._flights.values():
            changed.add(ino)
        self._unkeep_inode(ino)

    def _unkeep_name(self, parent: int, name: bytes) -> None:
        folder = self._folders.get(parent)
        kept = folder.names.pop(name, None) if folder is not None else None
        if kept is not None:
            del self._where[kept.wire["ino"]]

    def _unkeep_inode(self, ino: int) -> None:
        where = self._where.pop(ino, None)
        if where is not None:
            del self._folders[where[0]].names[where[1]]

    def _walked(self, parent: int, folder: _Folder, offset: int) -> None:
        """A walk reached `offset`: fetch what follows it unless that is kept,
        and fetch on when it nears the end of what is kept."""
        folder.last = offset
        if folder.fetching:
            return
        if not folder.start <= offset <= folder.end:
            after, folder.batch = offset, FIRST_BATCH
        elif not folder.eof and offset >= folder.end - folder.batch // 2:
            after, folder.batch = folder.end, min(2 * folder.batch, BATCH)
        else:
            return
        folder.fetching = True
        self._nursery.start_soon(self._fetch_after, parent, folder, after, folder.batch)

    async def _fetch_after(self, parent: int, folder: _Folder, offset: int,
                           limit: int) -> None:
        flight, changed = self._next_flight, set()
        self._next_flight += 1
        self._flights[flight] = changed
        sent = trio.current_time()
        try:
            reply = await self._fetch(parent, offset, limit)
        except DfsError as exc:
            log.debug("statahead failed", ino=parent, error=str(exc))
            return
        finally:
            folder.fetching = False
            del self._flights[flight]
        if self._folders.get(parent) is not folder:
            return
        # What the walk has passed it will not come back for.
        for passed in [n for n, kept in folder.names.items() if kept.offset <= folder.last]:
            self._unkeep_name(parent, passed)
        if offset != folder.end:
            folder.start = offset
        folder.end = offset
        folder.sent = sent
        folder.eof = reply["eof"]
        for name, wire, next_offset in reply["entries"]:
            folder.end = next_offset
            ino = wire["ino"]
            if ((parent, name) in changed or ino in changed
                    or wire["nlink"] > 1 and not stat.S_ISDIR(wire["mode"])):
                continue
            self._unkeep_inode(ino)
            self._unkeep_name(parent, name)
            folder.names[name] = _Kept(wire, next_offset, sent)
            self._where[ino] = (parent, name)
        while len(self._where) > MAX_ENTRIES and len(self._folders) > 1:
            self._drop_folder(next(iter(self._folders)))

    def _expire(self, folder: _Folder) -> None:
        for kept in folder.names.values():
            del self._where[kept.wire["ino"]]
        folder.names.clear()
        folder.start = folder.end = 0
        folder.eof = False

    def _drop_folder(self, parent: int) -> None:
        self._expire(self._folders.pop(parent))
