"""Replication factors of directories and files, inside one transaction.

A factor lives on the inode (0 = the cluster default). Directories pass theirs
on to what is created inside them; a file's factor is copied onto each of its
chunks, where re-replication, `status` and fsck read it.
"""

import errno

from dfs.errors import DfsError

from .records import Inode
from .store import Tx

MAX_REPLICAS = 16


def check(replicas: int) -> None:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise DfsError(errno.EINVAL, f"replicas must be 1..{MAX_REPLICAS}, not {replicas}")


def set_factor(tx: Tx, ino: int, replicas: int) -> Inode:
    """Give a directory or regular file the factor `replicas`; a file's
    existing chunks take it at once."""
    inode = tx.inode(ino)
    if not (inode.is_dir or inode.is_reg):
        raise DfsError(errno.EINVAL,
                       f"inode {ino} is neither a directory nor a regular file")
    inode.replicas = replicas
    tx.touch(inode)
    if inode.is_reg:
        for _, chunk_id in tx.chunks_of(ino):
            chunk = tx.chunk(chunk_id)
            if chunk is not None:
                chunk.replicas = replicas
                tx.put_chunk(chunk_id, chunk)
    return inode
