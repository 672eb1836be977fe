"""Snapshots: a directory's tree copied inside one transaction, sharing chunks.

The copy maps every file to the same chunks as its source, and each chunk's
`refs` counts the files that map it. A shared chunk is never written: the
first write lease or truncation that would change it copies it first on the
servers that hold it (`DataPath`), so each side keeps the bytes it had when
the snapshot was taken. Removing either side only drops references.
"""

import errno
from dataclasses import replace

from dfs.errors import DfsError

from . import quotas
from .namespace import Namespace, check_name
from .quotas import ROOT_INO
from .records import Dentry, Inode
from .store import Tx

# dfs's own records on a directory (the CSI plugin's volume and publication
# records) describe that directory, not its contents: a copy's root has none.
OWN_XATTRS = b"trusted.dfs."


def chunks_in(tx: Tx, ino: int) -> list[int]:
    """Every chunk id mapped by a file in the tree under directory `ino`."""
    tx.directory(ino)
    found = []
    for inode in tx.subtree(ino):
        if inode.is_reg:
            found.extend(chunk_id for _, chunk_id in tx.chunks_of(inode.ino))
    return found


def _check_outside(tx: Tx, source: int, parent: int) -> None:
    ino = parent
    for _ in range(quotas.MAX_DEPTH):
        if ino == source:
            raise DfsError(errno.EINVAL, f"snapshot: directory {parent} is inside the tree "
                                         f"of directory {source} being copied")
        if ino == ROOT_INO:
            return
        ino = tx.inode(ino).parent


def copy_tree(tx: Tx, ns: Namespace, now: int, source_ino: int, parent: int,
              name: bytes) -> tuple[Inode, int, int]:
    """Copy directory `source_ino` with everything under it as `name` in
    `parent`; returns the copy's root and what it holds as quotas count it
    (bytes of its files, its inodes). Charged last: EDQUOT discards the
    transaction, copy and all."""
    source = tx.directory(source_ino)
    target = tx.directory(parent)
    check_name(name)
    if tx.dentry(parent, name) is not None:
        raise DfsError(errno.EEXIST, f"{name!r} exists in directory {parent}")
    _check_outside(tx, source_ino, parent)

    root = _copy_inode(tx, source, parent, name, now)
    for key in tx.xattr_names(source_ino):
        if not key.startswith(OWN_XATTRS):
            tx.put_xattr(root.ino, key, tx.xattr(source_ino, key))
    target.nlink += 1
    ns.add_entry(tx, target, name, root.ino, now)
    tx.touch(root, target)

    # A file with several links inside the tree is copied once and linked again.
    copies: dict[int, Inode] = {}
    nbytes, ninodes = 0, 1
    stack = [(source_ino, root)]
    while stack:
        old_dir, new_dir = stack.pop()
        for _, child_name in tx.entries_after(old_dir, 0):
            child = tx.inode(tx.dentry(old_dir, child_name).ino)
            copy = copies.get(child.ino)
            if copy is not None:
                copy.nlink += 1
            else:
                copy = _copy_inode(tx, child, new_dir.ino, child_name, now)
                ninodes += 1
                for key in tx.xattr_names(child.ino):
                    tx.put_xattr(copy.ino, key, tx.xattr(child.ino, key))
                if child.is_dir:
                    new_dir.nlink += 1
                    stack.append((child.ino, copy))
                elif child.is_reg:
                    nbytes += child.size
                    _share_chunks(tx, child.ino, copy.ino)
                if child.nlink > 1 and not child.is_dir:
                    copies[child.ino] = copy
            # Entries keep their order (new cookies in the source's order).
            tx.put_dentry(new_dir.ino, child_name, Dentry(copy.ino, new_dir.next_cookie))
            new_dir.next_cookie += 1
            tx.touch(copy, new_dir)
    quotas.charge(tx, quotas.chain(tx, parent), nbytes, ninodes)
    return root, nbytes, ninodes


def _copy_inode(tx: Tx, inode: Inode, parent: int, name: bytes, now: int) -> Inode:
    """A new inode like `inode` (times kept, ctime now) under `parent`, not yet linked."""
    return replace(inode, ino=tx.next_id("inode"), nlink=2 if inode.is_dir else 1,
                   ctime=now, parent=parent, name=name, next_cookie=1)


def _share_chunks(tx: Tx, source: int, copy: int) -> None:
    for index, chunk_id in tx.chunks_of(source):
        chunk = tx.chunk(chunk_id)
        if chunk is None:
            continue
        chunk.refs += 1
        tx.put_chunk(chunk_id, chunk)
        tx.map_chunk(copy, index, chunk_id)
