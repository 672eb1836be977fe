"""The trash: files that lose their last name (rm, or a rename over them) are
kept for `--trash-hours` in `/.trash` before they are deleted, as MooseFS's
trash time and JuiceFS's trash keep them. A mistaken `rm -rf` is then undone
by `dfs trash restore`.

`/.trash` (mode 0700, root's) holds one folder per hour, `YYYY-MM-DD-HH` in
UTC, named for when its files were removed. A file in it is named
`<parent inode>-<inode>-<name>` (cut to NAME_MAX) and carries its old path in
the xattr `trusted.dfs.trash.path`; its ctime is when it was removed. It keeps
its inode, data and attributes. Its usage leaves every quota below the root
(a volume gets its room back at once; the root's quota, which the trash is
under, still counts it), so moving a file into the trash never fails for a
quota. Directories are not kept (they are empty when removed), nor a name of
a file that has others (its data is still reachable).

Removing a file inside the trash deletes it; so does `unlink` with
`trash=False` (the CSI plugin deleting a volume). The metaserver deletes what
has been in the trash longer than the trash time (service.py, `expire`).
"""

import calendar
import stat
import time

from dfs.ops import TRASH_NAME, TRASH_PATH_XATTR

from . import quotas
from .quotas import ROOT_INO
from .records import Inode
from .store import Tx

BUCKET_FORMAT = "%Y-%m-%d-%H"
BUCKET_SECONDS = 3600
NAME_MAX = 255
# Files deleted per transaction when the trash is emptied.
PURGE_BATCH = 256


def trash_ino(tx: Tx) -> int | None:
    dentry = tx.dentry(ROOT_INO, TRASH_NAME)
    return dentry.ino if dentry is not None else None


def inside(tx: Tx, parent: int) -> bool:
    """Whether folder `parent` is the trash or one of its hour folders."""
    found = trash_ino(tx)
    if found is None:
        return False
    return parent == found or tx.inode(parent).parent == found


def bucket_start(name: bytes) -> float | None:
    """When an hour folder's hour began, or None if `name` is not one."""
    try:
        return calendar.timegm(time.strptime(name.decode(), BUCKET_FORMAT))
    except (UnicodeDecodeError, ValueError):
        return None


def _folder(tx: Tx, ns, now: int, parent: Inode, name: bytes) -> Inode:
    dentry = tx.dentry(parent.ino, name)
    if dentry is not None:
        return tx.inode(dentry.ino)
    return ns.create(tx, now, parent.ino, name, stat.S_IFDIR | 0o700, 0, 0)


def keep(tx: Tx, ns, now: int, inode: Inode, parent: int, name: bytes) -> None:
    """Move `inode`, which has just lost its last name `name` in `parent`
    (nlink 0, its dentry gone, its usage still charged), into the trash."""
    root = tx.directory(ROOT_INO)
    trash = _folder(tx, ns, now, root, TRASH_NAME)
    hour = time.strftime(BUCKET_FORMAT, time.gmtime(now / 1e9)).encode()
    bucket = _folder(tx, ns, now, trash, hour)
    entry = (b"%d-%d-" % (parent, inode.ino) + name)[:NAME_MAX]
    quotas.move(tx, quotas.chain(tx, parent), quotas.chain(tx, bucket.ino),
                quotas.usage(inode), 1)
    tx.put_xattr(inode.ino, TRASH_PATH_XATTR, _joined(quotas.path_of(tx, parent), name))
    ns.add_entry(tx, bucket, entry, inode.ino, now)
    inode.nlink = 1
    inode.parent, inode.name = bucket.ino, entry
    tx.touch(inode, bucket)


def _joined(folder: str, name: bytes) -> bytes:
    return folder.encode(errors="surrogateescape").rstrip(b"/") + b"/" + name


def expired(tx: Tx, now: float, keep_seconds: float) -> list[tuple[int, bytes, bool]]:
    """Up to PURGE_BATCH of what has been in the trash longer than
    `keep_seconds`: (folder, name, is_dir) to delete, hour folders last."""
    trash = trash_ino(tx)
    if trash is None:
        return []
    found = []
    cutoff = now - keep_seconds
    for _, name in tx.entries_after(trash, 0):
        start = bucket_start(name)
        bucket = tx.dentry(trash, name).ino
        if start is None or start > cutoff or not tx.inode(bucket).is_dir:
            continue
        emptied = True
        for _, entry in tx.entries_after(bucket, 0):
            inode = tx.inode(tx.dentry(bucket, entry).ino)
            if inode.is_dir:   # not the trash's own: someone made it here
                emptied = False
            elif inode.ctime / 1e9 <= cutoff:
                found.append((bucket, entry, False))
                if len(found) >= PURGE_BATCH:
                    return found
            else:
                emptied = False
        if emptied and start + BUCKET_SECONDS <= cutoff:
            found.append((trash, name, True))
    return found
