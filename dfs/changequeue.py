"""Changes made ahead (`dfs mount --async-dirops`): in a folder this mount
holds an exclusive lease on (dirleases.py), a new file or folder, the removal
of a file and a rename to a name not there are answered at once, and sent to
the metaserver afterwards, many in one request and one commit
(changes_ahead). A new inode takes a number the metaserver handed out
beforehand (inode_grant).

What keeps this safe:
- Nobody else sees the folder before the metaserver knows what was changed
  in it: any request of another session naming it waits until this mount
  has sent its changes and let go of the lease (`DirLeases.settle` is
  `settled`).
- This mount's own requests keep their order: every request but a few that
  touch no folder waits until the changes made before it are known
  (`MetaLink.ahead`), so a write, a listing or a close of a new file is
  never sent before its create.
- Only what cannot fail later is answered ahead: the lease shows a new name
  is not there and a removed or renamed one is (the kernel has checked
  permissions and whether it is a folder), no quota counts inodes there, and
  a rename stays in the folder.
- fsync of a file or of a folder waits until the metaserver has every change
  made before it, which is durable then, as on a local filesystem; a change
  not yet sent is lost if the mount's host fails, as one not yet fsynced
  would be there.
- A change the metaserver refuses after all (the lease had run out while the
  mount was cut off, and someone else changed the folder) is logged, the
  names it touched are dropped from the kernel's cache, and a new file's
  fsync fails with EIO.
"""

import errno
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import trio

from . import logs
from .errors import DfsError
from .ops import DIR_SIZE
from .records import Attr
from .session import MetaLink

log = logs.get_logger("client")

# Changes in one changes_ahead, at most (the metaserver takes 1024).
MAX_BATCH = 256
# How long a batch waits for more changes before it is sent, unless someone
# waits for it: the metaserver's work per change is halved in batches of
# dozens, and a file closed before its create is sent needs no release.
GATHER = 0.002
# Inode numbers asked for at once; more are asked for when fewer than a
# quarter are left, so a burst of creates rarely waits for them.
GRANT = 1024
# Refused creates remembered for their fsync.
FAILED_MEMORY = 4096
# Changes made ahead and not yet answered for, at most: beyond, changes wait
# for the metaserver as without --async-dirops (and its pace sets theirs).
MAX_PENDING = 4096
# Requests about one inode: they wait only if it is one made ahead, or a
# folder changed ahead, that the metaserver does not know of yet.
BY_INODE = frozenset(("chunk_read chunk_write reserve commit open release getattr setattr "
                      "getxattr listxattr setxattr removexattr readlink").split())


@dataclass(eq=False)
class Batch:
    token: bytes
    changes: list["Change"] = field(default_factory=list)
    # Sent (or resent on a new connection) at least once: nothing more joins it.
    sent: bool = False


@dataclass(eq=False)
class Change:
    """One change made ahead: kind "create", "mkdir", "unlink" or "rename"."""
    seq: int
    kind: str
    parent: int
    name: bytes
    batch: Batch
    time: int
    # Of a create or mkdir: the new inode's attributes.
    attr: Attr | None = None
    # Of a rename: the new name.
    newname: bytes = b""
    # Of a create: the file is open, and the metaserver is to hold it for this session.
    hold: bool = False

    def wire(self) -> list:
        if self.kind == "create" or self.kind == "mkdir":
            attr = self.attr
            fields = [attr.mode, attr.uid, attr.gid, attr.ino, self.time]
            return [self.kind, self.parent, self.name, *fields,
                    *([self.hold] if self.kind == "create" else [])]
        if self.kind == "rename":
            return [self.kind, self.parent, self.name, self.newname, self.time]
        return [self.kind, self.parent, self.name, self.time]


class ChangeQueue:
    def __init__(self, meta: MetaLink, nursery: trio.Nursery,
                 on_failed: Callable[[Change, DfsError], None],
                 on_done: Callable[[dict], None]):
        self.meta = meta
        self.nursery = nursery
        self.on_failed = on_failed
        self.on_done = on_done
        self.batches: list[Batch] = []
        # Changes made ahead and not yet answered for: new inodes by number,
        # and how many changes each folder has waiting.
        self.pending: dict[int, Change] = {}
        self.folders: dict[int, int] = {}
        # Sequence numbers: of the last change made, and of the last one the
        # metaserver answered for (batches are sent one at a time, in order).
        self.made = 0
        self.done = 0
        self._progress = trio.Event()
        # Set while someone waits for the changes to be answered: no gathering then.
        self._waited = trio.Event()
        self.sending = False
        # Granted inode numbers not used yet: [next, end) ranges, and the
        # session they were granted to (a new session cannot use them).
        self.inodes: list[list[int]] = []
        self.inodes_of = 0
        self.granting = False
        # New inodes whose create was refused (the latest FAILED_MEMORY).
        self.failed: OrderedDict[int, None] = OrderedDict()
        self.recorded = 0
        self.refused = 0
        meta.ahead = self.before
        meta.resend = self.resend

    def room(self) -> bool:
        """Whether one more change may be made ahead now."""
        return self.done + MAX_PENDING > self.made

    # ---- making changes --------------------------------------------------------

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr | None:
        """A new file (a regular one, or with S_IFDIR in `mode` a folder)
        `name` in `parent`; None if no inode number is at hand."""
        ino = self._inode()
        if ino is None:
            return None
        now = time.time_ns()
        if stat.S_ISDIR(mode):
            kind, attr = "mkdir", Attr(ino, stat.S_IFDIR | stat.S_IMODE(mode), 2, uid, gid, 0,
                                       DIR_SIZE, DIR_SIZE // 512, now, now, now)
        else:
            kind, attr = "create", Attr(ino, stat.S_IFREG | stat.S_IMODE(mode), 1, uid, gid,
                                        0, 0, 0, now, now, now)
        change = self._add(kind, parent, name, now, attr=attr, hold=kind == "create")
        self.pending[ino] = change
        return attr

    def unlink(self, parent: int, name: bytes) -> int:
        """Remove the file `name` from `parent`; the time it was removed at (ns)."""
        return self._add("unlink", parent, name, time.time_ns()).time

    def rename(self, parent: int, name: bytes, newname: bytes) -> int:
        """Rename `name` in `parent` to `newname`, a name not there; the time (ns)."""
        return self._add("rename", parent, name, time.time_ns(), newname=newname).time

    def _add(self, kind: str, parent: int, name: bytes, now: int, **fields) -> Change:
        if not self.batches or self.batches[-1].sent or \
                len(self.batches[-1].changes) >= MAX_BATCH:
            self.batches.append(Batch(os.urandom(16)))
        self.made += 1
        change = Change(self.made, kind, parent, name, self.batches[-1], now, **fields)
        change.batch.changes.append(change)
        self.folders[parent] = self.folders.get(parent, 0) + 1
        if not self.sending:
            self.sending = True
            self.nursery.start_soon(self._send)
        return change

    def _inode(self) -> int | None:
        if self.inodes_of != self.meta.session:
            self.inodes.clear()
        if sum(end - first for first, end in self.inodes) < GRANT // 4 and not self.granting:
            self.granting = True
            self.nursery.start_soon(self._grant)
        if not self.inodes:
            return None
        ino = self.inodes[0][0]
        self.inodes[0][0] += 1
        if self.inodes[0][0] == self.inodes[0][1]:
            del self.inodes[0]
        return ino

    def closed(self, ino: int) -> bool:
        """A new file's last handle was closed: True if its create had not
        been sent yet, and is now sent as not held (no release to send)."""
        change = self.pending.get(ino)
        if change is None or not change.hold or change.batch.sent:
            return False
        change.hold = False
        return True

    # ---- waiting for them ------------------------------------------------------

    async def before(self, op: str, args: dict) -> None:
        """Before request `op`: wait for the changes made ahead it may depend on."""
        if self.done >= self.made:
            return
        if op in BY_INODE and args["ino"] not in self.pending and args["ino"] not in self.folders:
            return
        await self.settled()

    async def settled(self) -> None:
        """Wait until the metaserver has answered for every change made before this call."""
        target = self.made
        while self.done < target:
            self._waited.set()
            await self._progress.wait()

    def refused_create(self, ino: int) -> bool:
        """Whether the metaserver refused the create of inode `ino` (lately)."""
        return ino in self.failed

    # ---- sending ---------------------------------------------------------------

    async def _send(self) -> None:
        try:
            while self.batches:
                batch = self.batches[0]
                if len(batch.changes) < MAX_BATCH:
                    with trio.move_on_after(GATHER):
                        await self._waited.wait()
                if self._waited.is_set() and self.done >= self.made - len(batch.changes):
                    self._waited = trio.Event()
                batch.sent = True
                try:
                    reply = await self.meta.client.call(
                        "changes_ahead", session=self.meta.session, items=_items(batch),
                        token=batch.token)
                    results = reply["results"]
                except DfsError as exc:
                    results = [[exc.errno, exc.message]] * len(batch.changes)
                self.batches.pop(0)
                self._answered(batch, results)
        finally:
            self.sending = False

    def _answered(self, batch: Batch, results: list) -> None:
        for change, (error, value) in zip(batch.changes, results):
            left = self.folders.pop(change.parent) - 1
            if left:
                self.folders[change.parent] = left
            if change.attr is not None:
                del self.pending[change.attr.ino]
            if error:
                self._failed(change, DfsError(error, value))
                continue
            self.recorded += 1
            if change.hold:
                self.meta.hold(change.attr.ino)
            self.on_done(value)
        self.done = batch.changes[-1].seq
        self._progress.set()
        self._progress = trio.Event()

    def _failed(self, change: Change, exc: DfsError) -> None:
        self.refused += 1
        log.error("a change made ahead was refused by the metaserver", change=change.kind,
                  parent=change.parent, name=change.name.decode(errors="replace"),
                  ino=change.attr.ino if change.attr else None, error=exc.message)
        if change.attr is not None:
            self.failed[change.attr.ino] = None
            while len(self.failed) > FAILED_MEMORY:
                self.failed.popitem(last=False)
        self.on_failed(change, exc)

    async def resend(self, call) -> None:
        """On a new connection, before anything else names the session: send
        every change made ahead (the metaserver may have restarted, and others
        must not look into those folders before it knows them). The replies
        are taken by `_send`, which sends each batch again with its token."""
        for batch in self.batches:
            batch.sent = True
            try:
                await call("changes_ahead", session=self.meta.session, items=_items(batch),
                           token=batch.token)
            except DfsError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT):
                    raise
                return   # refused as a whole (an expired session): `_send` reports it

    async def _grant(self) -> None:
        session = self.meta.session
        try:
            reply = await self.meta.call("inode_grant", session=session, count=GRANT)
            if session == self.meta.session:
                if self.inodes_of != session:
                    self.inodes.clear()
                    self.inodes_of = session
                self.inodes.append([reply["first"], reply["first"] + reply["count"]])
        except DfsError as exc:
            log.warning("no inode numbers to make files ahead with", error=exc.message)
        finally:
            self.granting = False


def _items(batch: Batch) -> list:
    return [change.wire() for change in batch.changes]
