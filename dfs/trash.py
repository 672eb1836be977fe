"""`dfs trash`: list, restore and purge the files the metaserver keeps in
/.trash (see metaserver/trash.py for how they get there).

An entry is named as `dfs trash ls` shows it, HOUR/NAME: the hour folder
it is in and its name there. Restoring moves it back to the path it was
removed from (or to `--to`), making the folders on the way that are gone
since; it never replaces a file that has taken its place.
"""

import errno
import stat
from dataclasses import dataclass

import trio

from .config import ClusterRef
from .errors import DfsError
from .ops import META, RENAME_NOREPLACE, TRASH_NAME, TRASH_PATH_XATTR
from .rpc import Client

TRASH_PATH = b"/" + TRASH_NAME
PAGE = 1000


@dataclass
class Entry:
    hour: str
    name: str
    ino: int
    size: int
    removed: float
    path: str

    @property
    def ref(self) -> str:
        return f"{self.hour}/{self.name}"


async def _listing(client: Client, ino: int):
    offset = 0
    while True:
        reply = await client.call("readdir", ino=ino, offset=offset, limit=PAGE)
        for name, attr, offset in reply["entries"]:
            yield name, attr
        if reply["eof"] or not reply["entries"]:
            return


async def _trash(client: Client) -> int | None:
    try:
        return (await client.call("resolve", path=TRASH_PATH))["ino"]
    except DfsError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


async def _entries(client: Client) -> list[Entry]:
    trash = await _trash(client)
    found = []
    if trash is None:
        return found
    async for hour, attr in _listing(client, trash):
        if not stat.S_ISDIR(attr["mode"]):
            continue
        async for name, entry in _listing(client, attr["ino"]):
            if stat.S_ISDIR(entry["mode"]):
                continue   # the trash keeps files only; someone made this here
            try:
                path = (await client.call("getxattr", ino=entry["ino"],
                                          name=TRASH_PATH_XATTR))["value"]
            except DfsError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOENT):
                    raise
                path = b""
            found.append(Entry(hour.decode(errors="replace"), name.decode(errors="replace"),
                               entry["ino"], entry["size"], entry["ctime"] / 1e9,
                               path.decode(errors="surrogateescape")))
    return found


async def _folder(client: Client, path: str) -> int:
    """The inode of folder `path`, made (with the folders above it) if missing."""
    ino = (await client.call("resolve", path=b"/"))["ino"]
    for part in filter(None, path.split("/")):
        name = part.encode(errors="surrogateescape")
        try:
            attr = await client.call("lookup", parent=ino, name=name)
        except DfsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            attr = await client.call("mkdir", parent=ino, name=name, mode=0o755, uid=0, gid=0)
        if not stat.S_ISDIR(attr["mode"]):
            raise DfsError(errno.ENOTDIR, f"{path}: {part} is not a folder")
        ino = attr["ino"]
    return ino


def _pick(entries: list[Entry], refs: list[str]) -> list[Entry]:
    by_ref = {entry.ref: entry for entry in entries}
    missing = [ref for ref in refs if ref not in by_ref]
    if missing:
        raise DfsError(errno.ENOENT, f"not in the trash: {', '.join(missing)} (see 'dfs "
                                     "trash ls')")
    return [by_ref[ref] for ref in refs]


async def _restore(client: Client, refs: list[str], to: str | None) -> list[str]:
    trash = await _trash(client)
    chosen = _pick(await _entries(client), refs)
    done = []
    for entry in chosen:
        target = to or entry.path
        if not target.startswith("/") or target.endswith("/"):
            raise DfsError(errno.EINVAL, f"{entry.ref}: no path to restore it to; give one "
                                         "with --to /path/inside/dfs")
        folder, _, name = target.rpartition("/")
        parent = await _folder(client, folder)
        hour = (await client.call("lookup", parent=trash, name=entry.hour.encode()))["ino"]
        try:
            await client.call("rename", parent=hour, name=entry.name.encode(), newparent=parent,
                              newname=name.encode(errors="surrogateescape"),
                              flags=RENAME_NOREPLACE)
        except DfsError as exc:
            if exc.errno == errno.EEXIST:
                raise DfsError(errno.EEXIST, f"{target} exists: restore {entry.ref} elsewhere "
                                             "with --to") from None
            raise
        await client.call("removexattr", ino=entry.ino, name=TRASH_PATH_XATTR)
        done.append(target)
    return done


async def _purge(client: Client, refs: list[str] | None) -> int:
    """Delete entries now (all of them if `refs` is None); return how many."""
    trash = await _trash(client)
    entries = await _entries(client)
    chosen = entries if refs is None else _pick(entries, refs)
    hours = {}
    for entry in chosen:
        if entry.hour not in hours:
            hours[entry.hour] = (await client.call("lookup", parent=trash,
                                                   name=entry.hour.encode()))["ino"]
        await client.call("unlink", parent=hours[entry.hour], name=entry.name.encode())
    if refs is None and trash is not None:
        folders = [hour async for hour, attr in _listing(client, trash)
                   if stat.S_ISDIR(attr["mode"])]
        for hour in folders:
            try:
                await client.call("rmdir", parent=trash, name=hour)
            except DfsError as exc:
                if exc.errno != errno.ENOTEMPTY:   # a file removed meanwhile stays
                    raise
    return len(chosen)


def _run(cluster: ClusterRef, job, *args):
    async def run():
        client = Client(cluster.meta, cluster.secret, META, retry_for=30.0)
        try:
            return await job(client, *args)
        finally:
            await client.aclose()
    return trio.run(run)


def entries(cluster: ClusterRef) -> list[Entry]:
    return _run(cluster, _entries)


def restore(cluster: ClusterRef, refs: list[str], to: str | None = None) -> list[str]:
    """Move entries back; return the paths they are at now."""
    if to is not None and len(refs) != 1:
        raise DfsError(errno.EINVAL, "--to takes one entry at a time")
    return _run(cluster, _restore, refs, to)


def purge(cluster: ClusterRef, refs: list[str] | None) -> int:
    return _run(cluster, _purge, refs)
