"""The FUSE filesystem: pyfuse3 operations translated to metaserver calls and
chunk I/O.

Caching follows close-to-open: entries and attributes are cached by the
kernel for ATTR_TIMEOUT seconds, every open asks the metaserver afresh, and
the page cache is kept across opens only while the file is unchanged.

A mount of a subdirectory shows that directory as the root: the kernel's
root inode (1) stands for it, every other inode number is the metaserver's.
"""

import dataclasses
import errno
import os
import stat
import time
from collections import OrderedDict
from contextlib import asynccontextmanager

import pyfuse3
import trio

from . import logs
from .chunkio import ChunkIO
from .changequeue import ChangeQueue
from .dirleases import DirLeases
from .dirstream import DirStream
from .errors import DfsError
from .ops import RENAME_EXCHANGE, RENAME_NOREPLACE, check_name
from .openfile import (MTIME_LAG, READ_AHEAD_CACHE_BYTES, READ_CACHE_BYTES, MountWrites,
                       OpenFile)
from .pagefeed import PageFeed
from .readcache import ReadCache
from .records import Attr
from .session import MetaLink
from .statahead import Statahead

log = logs.get_logger("client")

ATTR_TIMEOUT = 1.0
READDIR_BATCH = 512
# Offsets 1 and 2 are "." and ".."; the metaserver's offsets follow.
DOT_OFFSETS = 2
SEEN_MEMORY = 10000
CAPABILITY_XATTR = b"security.capability"


@asynccontextmanager
async def _errno():
    """Turn DfsError into FUSEError (see DfsFS._by_inode for requests
    addressed by inode number)."""
    try:
        yield
    except DfsError as exc:
        raise pyfuse3.FUSEError(exc.errno) from None


def _entry(attr: Attr, ino: int) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = ino
    entry.generation = attr.gen
    entry.entry_timeout = ATTR_TIMEOUT
    entry.attr_timeout = ATTR_TIMEOUT
    entry.st_mode = attr.mode
    entry.st_nlink = attr.nlink
    entry.st_uid = attr.uid
    entry.st_gid = attr.gid
    entry.st_rdev = attr.rdev
    entry.st_size = attr.size
    entry.st_blksize = 1024 * 1024
    entry.st_blocks = attr.blocks
    entry.st_atime_ns = attr.atime
    entry.st_mtime_ns = attr.mtime
    entry.st_ctime_ns = attr.ctime
    return entry


class DfsFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, meta: MetaLink, chunkio: ChunkIO, root: int, nursery: trio.Nursery,
                 read_only: bool = False, read_cache_bytes: int = READ_CACHE_BYTES,
                 xattrs: bool = True, async_dirops: bool = False):
        super().__init__()
        self.meta = meta
        self.chunkio = chunkio
        self.root = root
        self.nursery = nursery
        self.read_only = read_only
        self.xattrs = xattrs
        self.writes = MountWrites()
        self.read_cache = ReadCache(read_cache_bytes, READ_AHEAD_CACHE_BYTES)
        self.page_feed = PageFeed()
        self.files: dict[int, OpenFile] = {}
        # (mtime, size) of recently closed files, to keep their page cache on reopen.
        self.seen: OrderedDict[int, tuple[int, int]] = OrderedDict()
        # The kernel asks for security.capability before every write; a recent
        # "none" is answered here instead of costing a metaserver round trip.
        self.no_capability: dict[int, float] = {}
        # Folder attributes as this mount's last change in each left them, with
        # when they came (see _note_dirs), oldest first.
        self.dir_attrs: OrderedDict[int, tuple[Attr, float]] = OrderedDict()
        self.statahead = Statahead(self._readdir_page, nursery, ATTR_TIMEOUT)
        self.dirleases = DirLeases(meta, nursery)
        # Changes made ahead of the metaserver, with --async-dirops.
        self.ahead = (ChangeQueue(meta, nursery, self._ahead_refused, self._note_dirs)
                      if async_dirops else None)
        if self.ahead is not None:
            self.dirleases.settle = self.ahead.settled
        self.handles: dict[int, OpenFile] = {}
        # Open directories by handle.
        self.dirs: dict[int, DirStream] = {}
        # Changes made through this mount so far (see dirstream.py).
        self.changes = 0
        # Handles opened for writing.
        self.writing: set[int] = set()
        self._next_fh = 1

    async def close(self) -> None:
        """Before the mount's tasks end: files made ahead reach the
        metaserver (while the session lasts), the page feed stops."""
        if self.ahead is not None:
            with trio.move_on_after(self.meta.session_ttl):
                await self.ahead.settled()
        await self.page_feed.close()

    # ---- inode numbers ---------------------------------------------------

    def _real(self, ino: int) -> int:
        return self.root if ino == pyfuse3.ROOT_INODE else ino

    def _kernel(self, ino: int) -> int:
        return pyfuse3.ROOT_INODE if ino == self.root else ino

    def _entry(self, wire: dict) -> pyfuse3.EntryAttributes:
        attr = Attr.from_wire(wire)
        kept = self.dir_attrs.get(attr.ino)
        if kept is not None and kept[0].ctime < attr.ctime:
            del self.dir_attrs[attr.ino]
        opened = self.files.get(attr.ino)
        if opened is not None and opened.dirty:
            # This mount has written what the metaserver does not know yet.
            attr.size = max(attr.size, opened.size)
            attr.mtime = max(attr.mtime, opened.mtime)
        return _entry(attr, self._kernel(attr.ino))

    def _note_dirs(self, reply: dict) -> dict:
        """Keep the attributes of the folders a change came back with. The
        kernel forgets a folder's attributes after every change in it and asks
        for them again at its next step into the folder; they are answered
        from here for as long as the kernel would have kept them itself. Of
        two changes whose replies cross, the later one's are kept."""
        now = trio.current_time()
        for wire in reply.get("dirs", ()):
            attr = Attr.from_wire(wire)
            self.dirleases.changed(attr)
            self.statahead.forget_inode(attr.ino)
            kept = self.dir_attrs.pop(attr.ino, None)
            self.dir_attrs[attr.ino] = (kept if kept is not None and kept[0].ctime > attr.ctime
                                        else (attr, now))
        while self.dir_attrs and now - next(iter(self.dir_attrs.values()))[1] >= ATTR_TIMEOUT:
            self.dir_attrs.popitem(last=False)
        return reply

    def _kept_dir_attr(self, inode: int) -> pyfuse3.EntryAttributes | None:
        kept = self.dir_attrs.pop(self._real(inode), None)
        if kept is None:
            return None
        age = trio.current_time() - kept[1]
        if age >= ATTR_TIMEOUT:
            return None
        entry = _entry(kept[0], inode)
        entry.attr_timeout = ATTR_TIMEOUT - age
        return entry

    @asynccontextmanager
    async def _changing(self, names: tuple = (), inodes: tuple = ()):
        """Around a change through this mount: once it is done (or its outcome
        unknown), what the mount kept of the names and inodes it changed goes
        (statahead's entries, a folder's attributes from an earlier change)."""
        folders = {parent for parent, _ in names}
        self.dirleases.begin(folders)
        try:
            yield
        finally:
            self.dirleases.end(folders)
            self.changes += 1
            for parent, name in names:
                self.statahead.forget_name(parent, name)
            for ino in inodes:
                self.statahead.forget_inode(ino)
                self.dir_attrs.pop(ino, None)

    @asynccontextmanager
    async def _by_inode(self, ino: int):
        """Turn DfsError into FUSEError for a request addressed by inode number.
        A vanished inode is ESTALE, so the kernel looks the path up again (as
        for NFS) instead of failing on a name that now points elsewhere; that
        lookup must not be answered with the same inode from statahead."""
        try:
            yield
        except DfsError as exc:
            if exc.errno != errno.ENOENT:
                raise pyfuse3.FUSEError(exc.errno) from None
            self.statahead.forget_inode(ino)
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _check_writable(self) -> None:
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _ids(self, ctx) -> dict:
        return {"uid": ctx.uid, "gid": ctx.gid}

    # ---- names and attributes -------------------------------------------

    async def lookup(self, parent_inode, name, ctx):
        parent = self._real(parent_inode)
        ahead = self.statahead.answer(parent, name)
        if ahead is not None:
            entry = self._entry(ahead[0])
            entry.entry_timeout = entry.attr_timeout = ahead[1]
            return entry
        if self.dirleases.absent(parent, name):
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            reply = await self.meta.read("lookup", parent=parent, name=name)
        except DfsError as exc:
            if exc.errno == errno.ENOENT:
                await self.dirleases.missed(parent)
            raise pyfuse3.FUSEError(exc.errno) from None
        self.statahead.looked_up(parent, reply)
        return self._entry(reply)

    async def forget(self, inode_list):
        """The metaserver keeps inodes alive by open handles, not lookups."""

    async def getattr(self, inode, ctx):
        kept = self._kept_dir_attr(inode)
        if kept is not None:
            return kept
        ino = self._real(inode)
        async with self._by_inode(ino):
            return self._entry(await self.meta.read("getattr", ino=ino))

    async def setattr(self, inode, attr, fields, fh, ctx):
        self._check_writable()
        ino = self._real(inode)
        changes = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns
        if fields.update_size:
            changes["size"] = attr.st_size
        opened = self.files.get(ino)
        async with self._changing(inodes=(ino,)), self._by_inode(ino):
            if opened is not None and (fields.update_size or fields.update_mtime):
                # Writes made before the call come first: their own mtime,
                # recorded later, would overwrite the one set here (cp -p
                # sets the copy's times on the open file before closing it).
                await opened.flush()
            reply = await self.meta.mutate("setattr", ino=ino, changes=changes)
        if fields.update_size:
            if opened is not None:
                opened.truncated(Attr.from_wire(reply))
            # The kernel cuts its page cache after the reply (see pagefeed.py).
            await self.page_feed.settle(ino)
        return self._entry(reply)

    async def readlink(self, inode, ctx):
        ino = self._real(inode)
        async with self._by_inode(ino):
            return (await self.meta.call("readlink", ino=ino))["target"]

    async def _make(self, op: str, parent_inode: int, name: bytes, **args) -> dict:
        """A change that adds `name` to a folder; returns the reply."""
        self._check_writable()
        parent = self._real(parent_inode)
        async with self._changing(names=((parent, name),)), _errno():
            self.dirleases.adding(parent, name)
            return self._note_dirs(await self.meta.mutate(op, parent=parent, name=name, **args))

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(await self._make("mknod", parent_inode, name, mode=mode, rdev=rdev,
                                            **self._ids(ctx)))

    async def mkdir(self, parent_inode, name, mode, ctx):
        made = self._new_ahead(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)
        if made is not None:
            return _entry(made, made.ino)
        return self._entry(await self._make("mkdir", parent_inode, name,
                                            mode=stat.S_IFDIR | stat.S_IMODE(mode),
                                            **self._ids(ctx)))

    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry(await self._make("symlink", parent_inode, name, target=target,
                                            **self._ids(ctx)))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        ino = self._real(inode)
        async with self._changing(inodes=(ino,)):
            return self._entry(await self._make("link", new_parent_inode, new_name, ino=ino))

    async def _remove(self, op: str, parent_inode: int, name: bytes) -> None:
        self._check_writable()
        parent = self._real(parent_inode)
        async with self._changing(names=((parent, name),)), _errno():
            self._note_dirs(await self.meta.mutate(op, parent=parent, name=name))
        self.dirleases.removed(parent, name)

    async def unlink(self, parent_inode, name, ctx):
        if not self._unlink_ahead(parent_inode, name):
            await self._remove("unlink", parent_inode, name)

    async def rmdir(self, parent_inode, name, ctx):
        await self._remove("rmdir", parent_inode, name)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._check_writable()
        parent, newparent = self._real(parent_inode_old), self._real(parent_inode_new)
        if self._rename_ahead(parent, name_old, newparent, name_new, flags):
            return
        async with self._changing(names=((parent, name_old), (newparent, name_new))), _errno():
            self.dirleases.adding(newparent, name_new)
            self._note_dirs(await self.meta.mutate(
                "rename", parent=parent, name=name_old, newparent=newparent,
                newname=name_new, flags=flags))
        if not flags & RENAME_EXCHANGE:
            self.dirleases.removed(parent, name_old)

    # ---- directories -----------------------------------------------------

    async def opendir(self, inode, ctx):
        """Nothing to ask the metaserver: the kernel opens only what it knows
        to be a directory, and a directory gone since fails at readdir."""
        fh = self._next_fh
        self._next_fh += 1
        self.dirs[fh] = DirStream(self._real(inode), inode)
        return fh

    async def readdir(self, fh, start_id, token):
        stream = self.dirs[fh]
        if start_id < DOT_OFFSETS:
            # The kernel takes only the name and type of "." and "..", never
            # their attributes, so none are fetched for them.
            dots = pyfuse3.EntryAttributes()
            dots.st_ino, dots.st_mode = stream.kernel_ino, stat.S_IFDIR
            for offset, name in ((1, b"."), (2, b"..")):
                if start_id < offset and not pyfuse3.readdir_reply(token, name, dots, offset):
                    return
        offset = max(start_id - DOT_OFFSETS, 0)
        while True:
            # A change through this mount while the page is fetched spoils its rest.
            changes = self.changes
            kept = stream.take(offset, changes)
            if kept is None:
                fetched = time.monotonic()
                async with _errno():
                    reply = await self._readdir_page(stream.ino, offset, READDIR_BATCH)
                entries, eof = reply["entries"], reply["eof"]
            else:
                entries, eof, fetched = kept
            for i, (name, attr, next_offset) in enumerate(entries):
                if not pyfuse3.readdir_reply(token, name, self._entry(attr),
                                             next_offset + DOT_OFFSETS):
                    stream.keep(entries[i:], offset, eof, fetched, changes)
                    return
                offset = next_offset
            if eof or not entries:
                return

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        """Every metadata change is durable before its reply; changes made
        ahead once the metaserver has them."""
        if self.ahead is not None:
            await self.ahead.settled()

    async def statfs(self, ctx):
        async with _errno():
            reply = await self.meta.call("statfs", ino=self.root)
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = reply["bsize"]
        out.f_blocks = reply["blocks"]
        out.f_bfree = reply["bfree"]
        out.f_bavail = reply["bavail"]
        out.f_files = reply["files"]
        out.f_ffree = out.f_favail = reply["ffree"]
        out.f_namemax = reply["namemax"]
        return out

    # ---- extended attributes ---------------------------------------------

    def _check_xattrs(self) -> None:
        """ENOSYS on a mount without extended attributes: the kernel then
        answers EOPNOTSUPP itself and never asks again, not even for the
        security.capability it otherwise looks up before every write."""
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)

    async def setxattr(self, inode, name, value, ctx):
        self._check_xattrs()
        self._check_writable()
        ino = self._real(inode)
        self.no_capability.pop(ino, None)
        async with self._changing(inodes=(ino,)), self._by_inode(ino):
            await self.meta.change("setxattr", ino=ino, name=name, value=value, flags=0)

    async def getxattr(self, inode, name, ctx):
        self._check_xattrs()
        ino = self._real(inode)
        capability = name == CAPABILITY_XATTR
        if capability and trio.current_time() < self.no_capability.get(ino, 0.0):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        try:
            async with self._by_inode(ino):
                return (await self.meta.call("getxattr", ino=ino, name=name))["value"]
        except pyfuse3.FUSEError as exc:
            if capability and exc.errno == pyfuse3.ENOATTR:
                self.no_capability[ino] = trio.current_time() + ATTR_TIMEOUT
            raise

    async def listxattr(self, inode, ctx):
        self._check_xattrs()
        ino = self._real(inode)
        async with self._by_inode(ino):
            return (await self.meta.call("listxattr", ino=ino))["names"]

    async def removexattr(self, inode, name, ctx):
        self._check_xattrs()
        self._check_writable()
        ino = self._real(inode)
        async with self._changing(inodes=(ino,)), self._by_inode(ino):
            await self.meta.change("removexattr", ino=ino, name=name)

    # ---- files -----------------------------------------------------------

    def _handle(self, opened: OpenFile, writing: bool) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = opened
        opened.handles += 1
        if writing:
            self.writing.add(fh)
            opened.writers += 1
        return fh

    def _open_file(self, attr: Attr, changing: bool = False) -> tuple[OpenFile, bool]:
        """The inode's OpenFile, and whether cached data of it may be kept:
        not if it changed since this mount saw it, nor while another mount may
        be writing it without telling (see OpenFile.flush)."""
        opened = self.files.get(attr.ino)
        if opened is None:
            opened = self.files[attr.ino] = OpenFile(attr.ino, attr, self.meta, self.chunkio,
                                                     self.nursery, self.writes,
                                                     self.read_cache, self.page_feed)
            seen = self.seen.pop(attr.ino, None)
            return opened, not changing and seen == (attr.mtime, attr.size)
        return opened, opened.refresh(attr, changing)

    async def open(self, inode, flags, ctx):
        if flags & os.O_ACCMODE != os.O_RDONLY:
            self._check_writable()
        ino = self._real(inode)
        self.meta.hold(ino)
        try:
            async with self._by_inode(ino):
                reply = await self.meta.call("open", ino=ino, session=self.meta.session)
        except BaseException:
            self.meta.unhold(ino)
            raise
        attr = Attr.from_wire(reply)
        opened, unchanged = self._open_file(attr, reply.get("changing", False))
        fh = self._handle(opened, writing=flags & os.O_ACCMODE != os.O_RDONLY)
        if flags & os.O_TRUNC and attr.size:
            # libfuse asks for atomic O_TRUNC: the kernel leaves the truncation to us.
            try:
                async with self._changing(inodes=(ino,)), _errno():
                    await opened.flush()
                    reply = await self.meta.mutate("setattr", ino=ino, changes={"size": 0})
            except pyfuse3.FUSEError:
                await self.release(fh)
                raise
            opened.truncated(Attr.from_wire(reply))
            unchanged = False
        await opened.settle_page_cache()
        return pyfuse3.FileInfo(fh=fh, keep_cache=unchanged)

    async def create(self, parent_inode, name, mode, flags, ctx):
        attr = self._new_ahead(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        if attr is not None:
            # Held once the metaserver has it (changequeue.py); the first
            # write asks for room under quotas.
            entry, granted = _entry(attr, attr.ino), 0
        else:
            reply = await self._make("mknod", parent_inode, name,
                                     mode=stat.S_IFREG | stat.S_IMODE(mode), rdev=0,
                                     session=self.meta.session, **self._ids(ctx))
            # Counted only now: a re-announce cannot name an inode not yet known,
            # and the metaserver holds it from the creating transaction on.
            self.meta.hold(reply["ino"])
            attr, entry = Attr.from_wire(reply), self._entry(reply)
            # From a metaserver older than first grants, 0: the first write asks.
            granted = reply.get("granted", 0)
        # A file this mount just made has no capability to drop: the kernel's
        # lookup of one before the first write need not go to the metaserver.
        self.no_capability[attr.ino] = trio.current_time() + ATTR_TIMEOUT
        opened, _ = self._open_file(attr)
        opened.granted_end = max(opened.granted_end, granted)
        fh = self._handle(opened, writing=flags & os.O_ACCMODE != os.O_RDONLY)
        return pyfuse3.FileInfo(fh=fh), entry

    def _ahead_lease(self, parent: int, name: bytes | None, new: bytes | None):
        """The exclusive lease on `parent` if a change there may be made ahead
        (changequeue.py): one to `name`, there by the lease, or to make `new`,
        not there by the lease and a valid name."""
        if self.ahead is None or not self.ahead.room():
            return None
        self._check_writable()
        lease = self.dirleases.exclusive(parent)
        if lease is None or (name is not None and name not in lease.names):
            return None
        if new is not None:
            if new in lease.names:
                return None
            try:
                check_name(new)
            except DfsError:
                return None
        return lease

    def _made_ahead(self, parent: int, names: tuple, lease, when: int) -> None:
        """After a change made ahead in `parent`: what the mount keeps of its
        names and attributes follows it (as `_changing` and the folder's
        attributes in a reply would)."""
        self.changes += 1
        for name in names:
            self.statahead.forget_name(parent, name)
        # The kernel forgets the folder's attributes after a change and asks
        # again: its new times, as the metaserver will have them.
        lease.attr.mtime = lease.attr.ctime = when
        self.dir_attrs.pop(parent, None)
        self.dir_attrs[parent] = (dataclasses.replace(lease.attr), trio.current_time())

    def _new_ahead(self, parent_inode: int, name: bytes, mode: int, ctx) -> Attr | None:
        """A new file or folder made ahead, or None where it cannot be."""
        parent = self._real(parent_inode)
        lease = self._ahead_lease(parent, None, name)
        if lease is None:
            return None
        attr = self.ahead.create(parent, name, mode, **self._ids(ctx))
        if attr is None:
            return None
        self.dirleases.adding(parent, name)
        if stat.S_ISDIR(mode):
            lease.attr.nlink += 1
        self._made_ahead(parent, (name,), lease, attr.ctime)
        return attr

    def _unlink_ahead(self, parent_inode: int, name: bytes) -> bool:
        parent = self._real(parent_inode)
        lease = self._ahead_lease(parent, name, None)
        if lease is None:
            return False
        when = self.ahead.unlink(parent, name)
        self.dirleases.removed(parent, name)
        self._made_ahead(parent, (name,), lease, when)
        return True

    def _rename_ahead(self, parent: int, name: bytes, newparent: int, newname: bytes,
                      flags: int) -> bool:
        """Within one folder, to a name not there (a folder can then not end
        up inside itself, nor a quota be crossed)."""
        if parent != newparent or flags & ~RENAME_NOREPLACE:
            return False
        lease = self._ahead_lease(parent, name, newname)
        if lease is None:
            return False
        when = self.ahead.rename(parent, name, newname)
        self.dirleases.adding(parent, newname)
        self.dirleases.removed(parent, name)
        self._made_ahead(parent, (name, newname), lease, when)
        return True

    def _ahead_refused(self, change, exc: DfsError) -> None:
        """A change made ahead was refused: the kernel forgets the names it
        touched, and the lease keeps them (its names stay a superset)."""
        self.dir_attrs.pop(change.parent, None)
        for name in (change.name, change.newname):
            if not name:
                continue
            self.dirleases.adding(change.parent, name)
            try:
                pyfuse3.invalidate_entry_async(self._kernel(change.parent), name)
            except OSError as error:
                log.warning("cannot drop a name from the kernel's cache", ino=change.parent,
                            name=name.decode(errors="replace"), error=str(error))

    async def read(self, fh, off, size):
        opened = self.handles[fh]
        async with _errno():
            return await opened.read(off, size)

    async def write(self, fh, off, buf):
        opened = self.handles[fh]
        async with _errno():
            return await opened.write(off, buf)

    async def flush(self, fh):
        await self._flush(fh, datasync=False)

    async def fsync(self, fh, datasync):
        await self._flush(fh, datasync)
        if self.ahead is not None:
            # A file made ahead is durable once its create is.
            await self.ahead.settled()
            if self.ahead.refused_create(self.handles[fh].ino):
                raise pyfuse3.FUSEError(errno.EIO)

    async def _flush(self, fh, datasync):
        opened = self.handles[fh]
        if opened.flushed:
            return
        async with self._changing(inodes=(opened.ino,)), _errno():
            await opened.flush(datasync)

    async def release(self, fh):
        opened = self.handles.pop(fh)
        opened.handles -= 1
        if fh in self.writing:
            self.writing.remove(fh)
            opened.writers -= 1
        try:
            if not opened.flushed:
                async with self._changing(inodes=(opened.ino,)), _errno():
                    await opened.flush()
        finally:
            if opened.handles == 0 and not opened.busy:
                self._forget_file(opened)
            try:
                # A file made ahead and not sent yet is sent as not held instead.
                if self.ahead is None or not self.ahead.closed(opened.ino):
                    await self.meta.call("release", ino=opened.ino, session=self.meta.session)
            except DfsError as exc:
                log.warning("release failed", ino=opened.ino, error=str(exc))
            finally:
                self.meta.unhold(opened.ino)

    async def record_quiet_syncs(self) -> None:
        """Keep the mtime that quiet fdatasyncs leave unrecorded at most
        MTIME_LAG behind on the metaserver."""
        while True:
            await trio.sleep(MTIME_LAG)
            for opened in list(self.files.values()):
                if opened.unrecorded is not None:
                    self.nursery.start_soon(self._record_quiet_sync, opened)

    async def _record_quiet_sync(self, opened: OpenFile) -> None:
        async with self._changing(inodes=(opened.ino,)):
            await opened.record_quiet_sync()

    async def _readdir_page(self, ino: int, offset: int, limit: int) -> dict:
        return await self.meta.read("readdir", ino=ino, offset=offset, limit=limit)

    def _forget_file(self, opened: OpenFile) -> None:
        del self.files[opened.ino]
        opened.forget_data()
        self.no_capability.pop(opened.ino, None)
        self.seen[opened.ino] = opened.seen
        while len(self.seen) > SEEN_MEMORY:
            self.seen.popitem(last=False)
