"""The namespace inside one transaction: inodes, names, links, renames, xattrs.

Functions here take a `Tx` and the time of the operation, change what they
must, and return wire replies. They raise DfsError before changing anything
they cannot finish, and the caller's nested transaction discards partial work
in any case.
"""

import errno
import stat

from dfs.errors import DfsError
from dfs.ops import DIR_SIZE, NAME_MAX, RENAME_EXCHANGE, RENAME_NOREPLACE, check_name
from dfs.records import Attr

from . import chunktable, quotas, trash
from .opens import OpenFiles
from .quotas import ROOT_INO
from .records import Dentry, Inode
from .store import Tx

XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 64 * 1024
XATTR_CREATE = 1
XATTR_REPLACE = 2
# Entries per readdir reply at most, so a reply stays far below the frame limit.
READDIR_MAX = 1024

_NODE_TYPES = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
_SETATTR_TYPES = {"mode": int, "uid": int, "gid": int, "size": int, "atime": int,
                  "mtime": int, "atime_now": bool, "mtime_now": bool}


def check_changes(changes: dict) -> None:
    for key, value in changes.items():
        kind = _SETATTR_TYPES.get(key)
        if kind is None:
            raise DfsError(errno.EINVAL, f"setattr: unknown change {key!r}")
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise DfsError(errno.EINVAL, f"setattr: {key} must be an integer")
        if kind is bool and not isinstance(value, bool):
            raise DfsError(errno.EINVAL, f"setattr: {key} must be a boolean")
    if changes.get("size", 0) < 0:
        raise DfsError(errno.EINVAL, "setattr: size must not be negative")


class Namespace:
    def __init__(self, chunk_size: int, opens: OpenFiles, trash_seconds: float = 0.0):
        self.chunk_size = chunk_size
        self.opens = opens
        # How long a removed file stays in the trash (0: no trash).
        self.trash_seconds = trash_seconds

    # --- reading --------------------------------------------------------------
    def attr(self, tx: Tx, inode: Inode) -> dict:
        if inode.is_reg:
            blocks = chunktable.stored_blocks(tx, inode.ino, inode.size, self.chunk_size)
            size = inode.size
        elif inode.is_dir:
            blocks, size = DIR_SIZE // 512, DIR_SIZE
        else:
            blocks, size = 0, inode.size
        return Attr(inode.ino, inode.mode, inode.nlink, inode.uid, inode.gid, inode.rdev,
                    size, blocks, inode.atime, inode.mtime, inode.ctime).to_wire()

    def lookup(self, tx: Tx, parent: int, name: bytes) -> dict:
        tx.directory(parent)
        if len(name) > NAME_MAX:
            raise DfsError(errno.ENAMETOOLONG, "name too long")
        dentry = tx.dentry(parent, name)
        if dentry is None:
            raise DfsError(errno.ENOENT, f"no entry {name!r} in directory {parent}")
        return {**self.attr(tx, tx.inode(dentry.ino)), "offset": dentry.cookie}

    def resolve(self, tx: Tx, path: bytes) -> dict:
        if not path.startswith(b"/"):
            raise DfsError(errno.EINVAL, "path must be absolute")
        inode = tx.inode(ROOT_INO)
        for part in path.split(b"/"):
            if part in (b"", b"."):
                continue
            if not inode.is_dir:
                raise DfsError(errno.ENOTDIR, f"{inode.ino} is not a directory")
            if len(part) > NAME_MAX:
                raise DfsError(errno.ENAMETOOLONG, "a path component exceeds 255 bytes")
            if part == b"..":
                inode = tx.inode(inode.parent)
                continue
            dentry = tx.dentry(inode.ino, part)
            if dentry is None:
                raise DfsError(errno.ENOENT, f"no entry {part!r} in directory {inode.ino}")
            inode = tx.inode(dentry.ino)
        return self.attr(tx, inode)

    def readlink(self, tx: Tx, ino: int) -> dict:
        inode = tx.inode(ino)
        if not stat.S_ISLNK(inode.mode):
            raise DfsError(errno.EINVAL, f"inode {ino} is not a symbolic link")
        return {"target": inode.target}

    def readdir(self, tx: Tx, ino: int, offset: int, limit: int) -> dict:
        tx.directory(ino)
        if limit < 1 or offset < 0:
            raise DfsError(errno.EINVAL, "readdir: limit must be positive, offset not negative")
        limit = min(limit, READDIR_MAX)
        entries = []
        for cookie, name in tx.entries_after(ino, offset):
            if len(entries) >= limit:
                return {"entries": entries, "eof": False}
            dentry = tx.dentry(ino, name)
            entries.append([name, self.attr(tx, tx.inode(dentry.ino)), cookie])
        return {"entries": entries, "eof": True}

    # --- creating -------------------------------------------------------------
    def create(self, tx: Tx, now: int, parent: int, name: bytes, mode: int, uid: int,
               gid: int, rdev: int = 0, target: bytes = b"", ino: int = 0) -> Inode:
        """A new inode named `name` in `parent`: number `ino` if given (one
        handed out ahead, see service.inode_grant), else the next."""
        directory = tx.directory(parent)
        check_name(name)
        if tx.dentry(parent, name) is not None:
            raise DfsError(errno.EEXIST, f"{name!r} exists in directory {parent}")
        if ino and tx.get_inode(ino) is not None:
            raise DfsError(errno.EEXIST, f"inode {ino} exists")
        quotas.charge(tx, quotas.chain(tx, parent), 0, 1)
        is_dir = stat.S_ISDIR(mode)
        inode = Inode(ino=ino or tx.next_id("inode"), mode=mode, nlink=2 if is_dir else 1, uid=uid,
                      gid=gid, rdev=rdev, size=len(target), atime=now, mtime=now, ctime=now,
                      parent=parent, target=target, name=name,
                      replicas=directory.replicas)
        if is_dir:
            directory.nlink += 1
        self.add_entry(tx, directory, name, inode.ino, now)
        tx.touch(inode, directory)
        return inode

    def mknod(self, tx: Tx, now: int, parent: int, name: bytes, mode: int, rdev: int,
              uid: int, gid: int) -> Inode:
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in _NODE_TYPES:
            raise DfsError(errno.EINVAL, "mknod makes files, FIFOs, sockets and devices only")
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        return self.create(tx, now, parent, name, kind | (mode & 0o7777), uid, gid, rdev)

    def mkdir(self, tx: Tx, now: int, parent: int, name: bytes, mode: int, uid: int,
              gid: int) -> Inode:
        return self.create(tx, now, parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid)

    def symlink(self, tx: Tx, now: int, parent: int, name: bytes, target: bytes, uid: int,
                gid: int) -> Inode:
        if not target or b"\0" in target or len(target) > 4095:
            raise DfsError(errno.EINVAL if len(target) <= 4095 else errno.ENAMETOOLONG,
                           "a symlink target is 1 to 4095 bytes without NUL")
        return self.create(tx, now, parent, name, stat.S_IFLNK | 0o777, uid, gid,
                           target=target)

    def link(self, tx: Tx, now: int, ino: int, parent: int, name: bytes) -> dict:
        inode = tx.inode(ino)
        if inode.is_dir:
            raise DfsError(errno.EPERM, "hard links to directories are not allowed")
        if inode.nlink == 0:
            raise DfsError(errno.ENOENT, f"inode {ino} was unlinked")
        directory = tx.directory(parent)
        check_name(name)
        if tx.dentry(parent, name) is not None:
            raise DfsError(errno.EEXIST, f"{name!r} exists in directory {parent}")
        # All links of a file stay under the same quotas, so its usage has one home.
        if quotas.chain(tx, inode.parent) != quotas.chain(tx, parent):
            raise DfsError(errno.EXDEV, "cannot link across quota directories")
        inode.nlink += 1
        inode.ctime = now
        self.add_entry(tx, directory, name, ino, now)
        tx.touch(inode, directory)
        return self.attr(tx, inode)

    def add_entry(self, tx: Tx, directory: Inode, name: bytes, ino: int, now: int) -> None:
        tx.put_dentry(directory.ino, name, Dentry(ino, directory.next_cookie))
        directory.next_cookie += 1
        directory.mtime = directory.ctime = now

    # --- removing -------------------------------------------------------------
    def unlink(self, tx: Tx, now: int, parent: int, name: bytes, keep: bool = True) -> dict:
        """Remove a name; a file losing its last one goes to the trash, if
        there is one, unless not to `keep` it."""
        directory = tx.directory(parent)
        dentry = self._existing(tx, parent, name)
        inode = tx.inode(dentry.ino)
        if inode.is_dir:
            raise DfsError(errno.EISDIR, f"{name!r} is a directory")
        tx.delete_dentry(parent, name, dentry)
        directory.mtime = directory.ctime = now
        tx.touch(directory)
        self._drop_link(tx, now, inode, parent, name, keep)
        return {}

    def rmdir(self, tx: Tx, now: int, parent: int, name: bytes) -> dict:
        directory = tx.directory(parent)
        dentry = self._existing(tx, parent, name)
        inode = tx.inode(dentry.ino)
        if not inode.is_dir:
            raise DfsError(errno.ENOTDIR, f"{name!r} is not a directory")
        if tx.has_entries(inode.ino):
            raise DfsError(errno.ENOTEMPTY, f"directory {name!r} is not empty")
        tx.delete_dentry(parent, name, dentry)
        directory.nlink -= 1
        directory.mtime = directory.ctime = now
        tx.touch(directory)
        quotas.charge(tx, quotas.chain(tx, parent), 0, -1)
        self.destroy(tx, inode)
        return {}

    def _existing(self, tx: Tx, parent: int, name: bytes) -> Dentry:
        if len(name) > NAME_MAX:
            raise DfsError(errno.ENAMETOOLONG, "name too long")
        dentry = tx.dentry(parent, name)
        if dentry is None:
            raise DfsError(errno.ENOENT, f"no entry {name!r} in directory {parent}")
        return dentry

    def _drop_link(self, tx: Tx, now: int, inode: Inode, parent: int, name: bytes,
                   keep: bool = True) -> None:
        """One name of a non-directory is gone (its dentry already removed)."""
        inode.nlink -= 1
        inode.ctime = now
        tx.touch(inode)
        if inode.nlink > 0:
            if inode.parent == parent:
                # Another link remains somewhere under the same quotas (links
                # never cross them); the nearest quota directory stands in.
                inode.parent = quotas.nearest(tx, parent)
            return
        if keep and self.trash_seconds and not trash.inside(tx, parent):
            try:
                trash.keep(tx, self, now, inode, parent, name)
                return
            except DfsError as exc:
                # The root's inode quota has no room for the trash's folders.
                if exc.errno != errno.EDQUOT:
                    raise
        quotas.charge(tx, quotas.chain(tx, parent), -quotas.usage(inode), -1)
        # An orphan is charged to nobody while open handles keep it alive.
        inode.parent = 0
        self.collect(tx, inode)

    def collect(self, tx: Tx, inode: Inode, recorded: set[int] | None = None) -> None:
        """Delete an unlinked inode now, or keep it as an orphan while someone
        holds it. `recorded`: the keepers LMDB had (minus any being dropped),
        or None when the inode has just lost its last name."""
        if inode.nlink > 0:
            return
        keepers = self.opens.keepers(inode.ino, recorded)
        if keepers:
            tx.put_orphan(inode.ino, keepers)
        else:
            self.destroy(tx, inode)

    def destroy(self, tx: Tx, inode: Inode) -> None:
        chunktable.trim_file(tx, inode.ino, 0, self.chunk_size)
        for name in tx.xattr_names(inode.ino):
            tx.delete_xattr(inode.ino, name)
        tx.delete_quota(inode.ino)
        tx.delete_epoch(inode.ino)
        tx.remove_orphan(inode.ino)
        tx.drop_inode(inode.ino)

    # --- renaming -------------------------------------------------------------
    def rename(self, tx: Tx, now: int, parent: int, name: bytes, newparent: int,
               newname: bytes, flags: int) -> dict:
        if flags not in (0, RENAME_NOREPLACE, RENAME_EXCHANGE):
            raise DfsError(errno.EINVAL, f"rename: unsupported flags {flags}")
        src_dir = tx.directory(parent)
        dst_dir = tx.directory(newparent)
        src_entry = self._existing(tx, parent, name)
        check_name(newname)
        source = tx.inode(src_entry.ino)
        dst_entry = tx.dentry(newparent, newname)
        target = tx.inode(dst_entry.ino) if dst_entry else None
        if flags == RENAME_NOREPLACE and target is not None:
            raise DfsError(errno.EEXIST, f"{newname!r} exists in directory {newparent}")
        if flags == RENAME_EXCHANGE and target is None:
            raise DfsError(errno.ENOENT, f"no entry {newname!r} in directory {newparent}")
        if target is not None and target.ino == source.ino:
            return {}
        if source.is_dir:
            self._check_not_inside(tx, newparent, source.ino)
        if flags == RENAME_EXCHANGE and target.is_dir:
            self._check_not_inside(tx, parent, target.ino)

        src_quotas, dst_quotas = quotas.chain(tx, parent), quotas.chain(tx, newparent)
        crossing = src_quotas != dst_quotas
        if flags == RENAME_EXCHANGE:
            if crossing:
                self._check_movable(source)
                self._check_movable(target)
                quotas.move(tx, dst_quotas, src_quotas, quotas.usage(target), 1)
                quotas.move(tx, src_quotas, dst_quotas, quotas.usage(source), 1)
            tx.put_dentry(parent, name, Dentry(target.ino, src_entry.cookie))
            tx.put_dentry(newparent, newname, Dentry(source.ino, dst_entry.cookie))
            self._reparent(target, parent, name, newparent, src_dir, dst_dir)
            self._reparent(source, newparent, newname, parent, dst_dir, src_dir)
            source.ctime = target.ctime = now
            tx.touch(source, target)
        else:
            if crossing:
                self._check_movable(source)
            if target is not None:
                self._replace(tx, now, source, target, newparent, newname, dst_entry, dst_dir)
            if crossing:
                quotas.move(tx, src_quotas, dst_quotas, quotas.usage(source), 1)
            tx.delete_dentry(parent, name, src_entry)
            cookie = dst_entry.cookie if dst_entry else dst_dir.next_cookie
            if dst_entry is None:
                dst_dir.next_cookie += 1
            tx.put_dentry(newparent, newname, Dentry(source.ino, cookie))
            self._reparent(source, newparent, newname, parent, dst_dir, src_dir)
            source.ctime = now
            tx.touch(source)
        for directory in (src_dir, dst_dir):
            directory.mtime = directory.ctime = now
        tx.touch(src_dir, dst_dir)
        return {}

    def _check_not_inside(self, tx: Tx, dir_ino: int, moved: int) -> None:
        ino = dir_ino
        for _ in range(quotas.MAX_DEPTH):
            if ino == moved:
                raise DfsError(errno.EINVAL, "cannot move a directory into itself")
            if ino == ROOT_INO:
                return
            ino = tx.inode(ino).parent

    @staticmethod
    def _check_movable(inode: Inode) -> None:
        if inode.is_dir:
            raise DfsError(errno.EXDEV, "cannot move a directory across quota directories")
        if inode.nlink > 1:
            raise DfsError(errno.EXDEV, "cannot move a hard-linked file across quota "
                                        "directories")

    def _replace(self, tx: Tx, now: int, source: Inode, target: Inode, newparent: int,
                 newname: bytes, dst_entry: Dentry, dst_dir: Inode) -> None:
        if source.is_dir and not target.is_dir:
            raise DfsError(errno.ENOTDIR, f"{newname!r} is not a directory")
        if not source.is_dir and target.is_dir:
            raise DfsError(errno.EISDIR, f"{newname!r} is a directory")
        if target.is_dir:
            if tx.has_entries(target.ino):
                raise DfsError(errno.ENOTEMPTY, f"directory {newname!r} is not empty")
            dst_dir.nlink -= 1
            quotas.charge(tx, quotas.chain(tx, newparent), 0, -1)
            self.destroy(tx, target)
        else:
            self._drop_link(tx, now, target, newparent, newname)

    @staticmethod
    def _reparent(inode: Inode, parent: int, name: bytes, old_parent: int,
                  new_dir: Inode, old_dir: Inode) -> None:
        """`inode` now hangs as `name` under `parent` (it was under `old_parent`)."""
        if inode.is_dir:
            if parent != old_parent:
                old_dir.nlink -= 1
                new_dir.nlink += 1
            inode.parent, inode.name = parent, name
        elif inode.nlink == 1 or inode.parent == old_parent:
            inode.parent, inode.name = parent, name

    # --- attributes -----------------------------------------------------------
    def setattr(self, tx: Tx, now: int, ino: int, changes: dict,
                reserved: dict[int, int]) -> dict:
        """Apply `changes` (already checked) except for the data of a cut chunk."""
        inode = tx.inode(ino)
        if "size" in changes:
            self._resize(tx, inode, changes["size"], reserved)
            inode.mtime = now
        if "mode" in changes:
            inode.mode = stat.S_IFMT(inode.mode) | (changes["mode"] & 0o7777)
        if "uid" in changes:
            inode.uid = changes["uid"]
        if "gid" in changes:
            inode.gid = changes["gid"]
        if changes.get("atime_now"):
            inode.atime = now
        elif "atime" in changes:
            inode.atime = changes["atime"]
        if changes.get("mtime_now"):
            inode.mtime = now
        elif "mtime" in changes:
            inode.mtime = changes["mtime"]
        inode.ctime = now
        tx.touch(inode)
        return self.attr(tx, inode)

    def _resize(self, tx: Tx, inode: Inode, size: int, reserved: dict[int, int]) -> None:
        if inode.is_dir:
            raise DfsError(errno.EISDIR, f"inode {inode.ino} is a directory")
        if not inode.is_reg:
            raise DfsError(errno.EINVAL, f"inode {inode.ino} is not a regular file")
        quotas.charge(tx, quotas.chain(tx, inode.parent), size - inode.size, 0, reserved)
        if size < inode.size:
            chunktable.trim_file(tx, inode.ino, size, self.chunk_size)
        inode.size = size

    def grow(self, tx: Tx, now: int, ino: int, size: int, mtime: int,
             reserved: dict[int, int]) -> dict:
        """Data up to `size` is on every replica: extend the file to it."""
        inode = tx.inode(ino)
        if not inode.is_reg:
            raise DfsError(errno.EINVAL, f"inode {ino} is not a regular file")
        if size > inode.size:
            quotas.charge(tx, quotas.chain(tx, inode.parent), size - inode.size, 0, reserved)
            inode.size = size
        inode.mtime = mtime
        inode.ctime = now
        tx.touch(inode)
        return self.attr(tx, inode)

    # --- extended attributes --------------------------------------------------
    def setxattr(self, tx: Tx, now: int, ino: int, name: bytes, value: bytes,
                 flags: int) -> dict:
        inode = tx.inode(ino)
        self._check_xattr_name(name)
        if len(value) > XATTR_VALUE_MAX:
            raise DfsError(errno.E2BIG, f"xattr value exceeds {XATTR_VALUE_MAX} bytes")
        if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
            raise DfsError(errno.EINVAL, f"setxattr: bad flags {flags}")
        exists = tx.xattr(ino, name) is not None
        if flags & XATTR_CREATE and exists:
            raise DfsError(errno.EEXIST, f"xattr {name!r} exists")
        if flags & XATTR_REPLACE and not exists:
            raise DfsError(errno.ENODATA, f"no xattr {name!r}")
        tx.put_xattr(ino, name, value)
        inode.ctime = now
        tx.touch(inode)
        return {}

    def getxattr(self, tx: Tx, ino: int, name: bytes) -> dict:
        tx.inode(ino)
        self._check_xattr_name(name)
        value = tx.xattr(ino, name)
        if value is None:
            raise DfsError(errno.ENODATA, f"no xattr {name!r}")
        return {"value": value}

    def listxattr(self, tx: Tx, ino: int) -> dict:
        tx.inode(ino)
        return {"names": tx.xattr_names(ino)}

    def removexattr(self, tx: Tx, now: int, ino: int, name: bytes) -> dict:
        inode = tx.inode(ino)
        self._check_xattr_name(name)
        if not tx.delete_xattr(ino, name):
            raise DfsError(errno.ENODATA, f"no xattr {name!r}")
        inode.ctime = now
        tx.touch(inode)
        return {}

    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if not name or b"\0" in name:
            raise DfsError(errno.EINVAL, "an xattr name is 1 to 255 bytes without NUL")
        if len(name) > XATTR_NAME_MAX:
            raise DfsError(errno.ERANGE, f"xattr name exceeds {XATTR_NAME_MAX} bytes")
