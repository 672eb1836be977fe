"""Directory quotas: which apply to an inode, charging them, measuring a subtree.

Usage is changed in the same transaction as the change that causes it, and
every quota on the way to the root is charged, so nested quotas stay exact.
"""

import errno

from dfs.errors import DfsError

from .records import Inode
from .store import Tx

ROOT_INO = 1
# A parent chain longer than this is corrupt, not deep.
MAX_DEPTH = 4096


def chain(tx: Tx, dir_ino: int) -> list[int]:
    """The directories carrying a quota from `dir_ino` up to the root, nearest first."""
    found = []
    ino = dir_ino
    for _ in range(MAX_DEPTH):
        if tx.quota(ino) is not None:
            found.append(ino)
        inode = tx.get_inode(ino)
        if ino == ROOT_INO or inode is None or inode.parent == 0:
            break
        ino = inode.parent
    return found


def nearest(tx: Tx, dir_ino: int) -> int:
    """The nearest quota directory at or above `dir_ino`, or the root."""
    found = chain(tx, dir_ino)
    return found[0] if found else ROOT_INO


def charge(tx: Tx, quotas: list[int], dbytes: int, dinodes: int,
           reserved: dict[int, int] | None = None) -> None:
    """Add to the usage of every quota in `quotas`; EDQUOT if growth exceeds one.

    `reserved` maps a quota directory to bytes promised to writers elsewhere,
    which growth here must leave room for.
    """
    records = [(ino, tx.quota(ino)) for ino in quotas]
    for ino, quota in records:
        if dbytes > 0 and quota.bytes_limit:
            held = (reserved or {}).get(ino, 0)
            if quota.bytes_used + dbytes + held > quota.bytes_limit:
                raise DfsError(errno.EDQUOT, f"byte quota of directory {ino} exceeded")
        if dinodes > 0 and quota.inodes_limit:
            if quota.inodes_used + dinodes > quota.inodes_limit:
                raise DfsError(errno.EDQUOT, f"inode quota of directory {ino} exceeded")
    for ino, quota in records:
        quota.bytes_used = max(0, quota.bytes_used + dbytes)
        quota.inodes_used = max(0, quota.inodes_used + dinodes)
        tx.put_quota(ino, quota)


def move(tx: Tx, source: list[int], dest: list[int], nbytes: int, ninodes: int) -> None:
    """Move usage from the quotas of one place to another (shared ancestors keep it)."""
    leaving = [q for q in source if q not in dest]
    arriving = [q for q in dest if q not in source]
    charge(tx, arriving, nbytes, ninodes)
    charge(tx, leaving, -nbytes, -ninodes)


def usage(inode: Inode) -> int:
    """The bytes an inode counts for: a regular file's size, else none."""
    return inode.size if inode.is_reg else 0


def subtree_usage(tx: Tx, dir_ino: int) -> tuple[int, int]:
    """Bytes of regular files and count of inodes beneath a directory."""
    nbytes = ninodes = 0
    for inode in tx.subtree(dir_ino):
        ninodes += 1
        nbytes += usage(inode)
    return nbytes, ninodes


def path_of(tx: Tx, ino: int) -> str:
    parts = []
    for _ in range(MAX_DEPTH):
        if ino == ROOT_INO:
            break
        inode = tx.get_inode(ino)
        if inode is None:
            break
        parts.append(inode.name.decode(errors="surrogateescape"))
        ino = inode.parent
    return "/" + "/".join(reversed(parts))
