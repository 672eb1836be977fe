"""`dfs backup get`: copy a backup of the metadata from the metaserver's
backup folder to a file here, a piece at a time, checked against the sha256
the metaserver recorded, with a progress bar on stderr.

The file appears under its final name only once it is whole and checked, with
`<file>.sha256` beside it, so dfs-metaserver-restore (and `sha256sum -c`) can
check it again later.
"""

import errno
import hashlib
import os
import sys
from pathlib import Path

import trio

from . import logs, transit
from .config import ClusterRef
from .errors import DfsError
from .framing import MAX_DATA
from .ops import META
from .progress import Progress
from .records import BackupInfo
from .rpc import Client

log = logs.get_logger("client")


def _pick(backups: list[BackupInfo], name: str) -> BackupInfo:
    if not backups:
        raise DfsError(errno.ENOENT, "the metaserver has no backups yet: take one with "
                                     "`dfs backup now`")
    if name == "latest":
        return backups[-1]
    for backup in backups:
        if backup.name == name:
            return backup
    raise DfsError(errno.ENOENT, f"no backup {name!r} (see `dfs backup ls`)")


async def read_whole(client: Client, op: str, name: str, size: int, out, on_piece,
                     timeout: float | None = None, **fields) -> None:
    """Copy the `size` bytes of `name` that `op` (backup_read, log_copy_read)
    serves a piece at a time into the open file `out`, calling
    on_piece(data) after each piece; EIO if it ends short."""
    while out.tell() < size:
        at = out.tell()
        data = (await transit.fetch(
            lambda: client.call(op, timeout=timeout, name=name, offset=at, length=MAX_DATA,
                                **fields),
            lambda reply: transit.check(reply["data"], reply.get("crc"), f"{name} at {at}"),
            lambda attempt: log.warning("piece of a copy arrived damaged", copy=name,
                                        offset=at, attempt=attempt + 1)))["data"]
        if not data:
            raise DfsError(errno.EIO, f"{name} ended at {out.tell()} bytes, not {size}")
        out.write(data)
        on_piece(data)


async def _fetch(cluster: ClusterRef, name: str, target: Path, stream, force: bool
                 ) -> tuple[BackupInfo, Path]:
    client = Client(cluster.meta, cluster.secret, META, retry_for=30.0)
    partial = None
    try:
        listed = (await client.call("backup_list"))["backups"]
        backup = _pick([BackupInfo.from_wire(b) for b in listed], name)
        if target.is_dir():
            target = target / backup.name
        partial = target.with_name(target.name + ".partial")
        progress = Progress("backup", backup.size, stream, force)
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            def piece(data: bytes) -> None:
                digest.update(data)
                progress.show(out.tell(), f"{out.tell() >> 20}/{backup.size >> 20} MiB")
            await read_whole(client, "backup_read", backup.name, backup.size, out, piece)
            out.flush()
            os.fsync(out.fileno())
        progress.end()
        if backup.sha256 and digest.hexdigest() != backup.sha256:
            raise DfsError(errno.EIO, f"the copy of {backup.name} does not match the checksum "
                                      "the metaserver recorded; try again")
        sha_file = target.with_name(target.name + ".sha256")
        sha_file.write_text(f"{digest.hexdigest()}  {target.name}\n")
        os.replace(partial, target)
        return backup, target
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
        await client.aclose()


def fetch(cluster: ClusterRef, name: str, target: Path, stream=sys.stderr,
          force_progress: bool = False) -> tuple[BackupInfo, Path]:
    """Copy backup `name` ("latest" for the newest) to `target` (a file, or a
    folder to put it in under its own name); return it and where it went."""
    return trio.run(_fetch, cluster, name, target, stream, force_progress)
