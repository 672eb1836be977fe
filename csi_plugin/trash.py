"""Removing a volume's or a snapshot's tree from the dfs tree.

The directory is first renamed into `/.dfs-csi/trash/`, which is atomic: from
then on nothing finds it under its id. Removing the tree takes a call per
entry, so a removal cut short leaves the rest in the trash, and the next
discard empties the trash whole.
"""

from .metaclient import MetaClient

TRASH_DIR = "/.dfs-csi/trash"


def discard(meta: MetaClient, parent: int, name: str) -> bool:
    """Remove `name` in directory `parent` with everything below it; False if
    there was no `name`. Raises DfsError."""
    trash = meta.ensure_path(TRASH_DIR, 0o700)
    attr = meta.lookup(parent, name)
    if attr is not None:
        # The inode number keeps apart two discarded trees of one name.
        parked = f"{name}.{attr.ino}"
        meta.call("rename", parent=parent, name=name.encode(), newparent=trash.ino,
                  newname=parked.encode(), flags=0)
    for leftover, _ in list(meta.entries(trash.ino)):
        meta.remove_tree(trash.ino, leftover)
    return attr is not None
