"""dfs-metaserver-restore: put a backup of the metadata (backups.py) in place
of a metaserver's database, while that metaserver is stopped.

The backup is checked first (its .sha256 if it has one, then that it is a dfs
database with a root), and the database it replaces is kept beside it as
`meta.lmdb.before-restore-<time>`. A backup is older than the cluster it comes
back to, so the restored database is prepared for what it does not know:

- Ids handed out after the backup (inodes, chunks, sessions, chunk servers)
  may still be in use: on the chunk servers, in mounts' caches, in mounts'
  sessions. Each counter jumps ahead by GAP, so none is handed out twice.
- A chunk written after the backup is at a newer version on the chunk servers
  than the backup says. When a server registers, the metaserver takes the
  newest version it holds as the chunk's (cluster.py), so such files keep
  their newest data, at the size the backup recorded.
- A chunk that no file in the backup refers to (a file made after it) is kept,
  not deleted, for `--hold` (cluster.py, fsck.py), in case this was the wrong
  backup and the database set aside is to come back.
- Attachment epochs and chunk versions moved after the backup are not known,
  yet mounts and chunk servers hold them. The restored database moves either
  only to values above all of those (`floor`), so none is handed out twice.
  A mount presenting a lost epoch (newer than the restored one, below the
  floor) moves the directory to it (fences.py), which fences out the mounts
  of older epochs as a `fence` would.
- Which chunk servers hold what is taken from their registrations: the
  metaserver asks each to register again after it starts, and hands out no
  replica until every server it knows has (or the heartbeat timeout passed),
  lest an older replica be read, or moved on past a newer one, before the
  server holding the newer one is heard from (cluster.py).
"""

import argparse
import errno
import os
import shutil
import sys
import time
from pathlib import Path

import lmdb

from dfs import logs
from dfs.durable import fsync_dir
from dfs.errors import DfsError

from .backups import recorded_sha256, sha256_of
from .quotas import ROOT_INO
from .store import (CHANGELOG, CLUSTER_ID, DATABASE, DATABASES, LOG_HISTORY, LOG_SEQ, Store, Tx,
                    begin_history, drop_log, lock_data_dir)

log = logs.get_logger("metaserver")

# How far the id counters jump: more ids than a cluster hands out between a
# backup and its restore, and 2**64 leaves room for billions of restores.
GAP = 1 << 32
COUNTERS = ("inode", "chunk", "session", "chunkserver")
# Counters that say what restores did.
RESTORES = "restores"
RESTORED_AT = "restored_at"
HOLD_UNTIL = "restore_hold_until"
# Set until the chunk servers have registered with the restored database.
SETTLING = "restore_settling"
# After its n-th restore a database moves attachment epochs and chunk
# versions to n * SPAN at least: above any moved to before it, which mounts and
# chunk servers may hold though the backup does not know them.
SPAN = 1 << 32
DEFAULT_HOLD = 7 * 86400


def floor(tx: Tx) -> int:
    """The least epoch or chunk version this database may move to (see SPAN)."""
    return tx.counter(RESTORES) * SPAN


def check_backup(path: Path) -> dict:
    """What the backup at `path` holds; DfsError if it is not a sound dfs backup."""
    if not path.is_file():
        raise DfsError(errno.ENOENT, f"{path}: no such file")
    recorded = recorded_sha256(path)
    if recorded is not None and recorded != sha256_of(path):
        raise DfsError(errno.EIO, f"{path} does not match its checksum in {path.name}.sha256: "
                                  "it is damaged or was cut short; take another copy")
    try:
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False,
                        max_dbs=len(DATABASES))
    except lmdb.Error as exc:
        raise DfsError(errno.EINVAL, f"{path} is not an LMDB database: {exc}") from None
    try:
        with env.begin() as txn:
            try:
                dbs = {name: env.open_db(name.encode(), txn=txn, create=False)
                       for name in DATABASES if name != CHANGELOG}
            except lmdb.NotFoundError:
                raise DfsError(errno.EINVAL, f"{path} is not a dfs metadata backup (it lacks "
                                             "the metaserver's tables)") from None
            tx = Tx(txn, dbs)
            if tx.get_inode(ROOT_INO) is None:
                raise DfsError(errno.EINVAL, f"{path} holds no root directory: not a dfs backup")
            return {"inodes": txn.stat(dbs["inodes"])["entries"],
                    "chunks": txn.stat(dbs["chunks"])["entries"],
                    "checksum": "checked" if recorded else "none beside it",
                    "history": tx.counter(LOG_HISTORY), "seq": tx.counter(LOG_SEQ)}
    except lmdb.Error as exc:
        raise DfsError(errno.EIO, f"{path} cannot be read as a database: {exc}") from None
    finally:
        env.close()


def prepare(tx: Tx, now: float, hold: float, replaced: dict[str, int] | None = None) -> int:
    """Make a restored database safe to serve (see the module's docstring),
    counting on from the database it replaces (`replaced`, its counters) where
    that one got further, as an earlier restore's does; return how many
    restores it has been through."""
    replaced = replaced or {}
    for name in COUNTERS:
        tx.put_counter(name, max(tx.counter(name), replaced.get(name, 0), 1) + GAP)
    restores = max(tx.counter(RESTORES), replaced.get(RESTORES, 0)) + 1
    tx.put_counter(RESTORES, restores)
    if not tx.counter(CLUSTER_ID) and replaced.get(CLUSTER_ID):
        # A backup from before cluster ids: it is the replaced database's cluster.
        tx.put_counter(CLUSTER_ID, replaced[CLUSTER_ID])
    tx.put_counter(RESTORED_AT, int(now))
    tx.put_counter(HOLD_UNTIL, int(now + hold))
    tx.put_counter(SETTLING, 1)
    begin_history(tx)
    drop_log(tx)
    return restores


def _counters(database: Path) -> dict[str, int]:
    """The counters prepare() counts on from, of the database folder being
    replaced (none if it is unreadable: a lost disk)."""
    try:
        env = lmdb.open(str(database), readonly=True, lock=False, max_dbs=len(DATABASES))
    except lmdb.Error:
        return {}
    try:
        with env.begin() as txn:
            tx = Tx(txn, {"counters": env.open_db(b"counters", txn=txn, create=False)})
            return {name: tx.counter(name) for name in (*COUNTERS, RESTORES, CLUSTER_ID)}
    except lmdb.Error:
        return {}
    finally:
        env.close()


def _install(backup: Path, database: Path) -> None:
    database.mkdir()
    partial = database / "data.mdb.partial"
    with open(backup, "rb") as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    os.rename(partial, database / "data.mdb")
    fsync_dir(database)
    fsync_dir(database.parent)


def restore(data_dir: Path, backup: Path, hold: float, say=print) -> Path | None:
    """Replace DIR's database with `backup` (a backup file, or a stopped
    metalogger's folder); return where the old one was put."""
    lock = lock_data_dir(data_dir)
    source_lock = None
    try:
        if backup.is_dir():
            source_lock = lock_data_dir(backup, "metalogger")
            backup = backup / DATABASE / "data.mdb"
        summary = check_backup(backup)
        say(f"backup {backup}: {summary['inodes']} inodes, {summary['chunks']} chunks, "
            f"checksum {summary['checksum']}")
        database = data_dir / DATABASE
        replaced = _counters(database) if database.exists() else {}
        kept = None
        if database.exists():
            kept = data_dir / f"meta.lmdb.before-restore-{time.strftime('%Y%m%dT%H%M%S')}"
            os.rename(database, kept)
        try:
            _install(backup, database)
            store = Store(data_dir, lock=lock)
            store.log_wanted = False
            try:
                restores = store.write_now(lambda tx: prepare(tx, time.time(), hold, replaced))
            finally:
                store.close()
        except BaseException:
            shutil.rmtree(database, ignore_errors=True)
            if kept is not None:
                os.rename(kept, database)
            raise
        if kept is not None:
            say(f"the database it replaced is kept as {kept}")
        log.info("metadata restored", backup=str(backup), data_dir=str(data_dir),
                 restores=restores, kept=str(kept) if kept else None)
        return kept
    finally:
        os.close(lock)
        if source_lock is not None:
            os.close(source_lock)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dfs-metaserver-restore",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Replace a stopped metaserver's database with a backup of it (made by\n"
                    "the metaserver itself, see --backup-dir, or fetched with `dfs backup\n"
                    "get`). The backup is checked first and the database it replaces is\n"
                    "kept beside it. Then start the metaserver as before: the chunk\n"
                    "servers register again, files written since the backup keep their\n"
                    "newest data at the size the backup knew, files made since it are\n"
                    "gone from the namespace (their chunks are kept for --hold), and\n"
                    "mounts reconnect by themselves.",
        epilog="example:\n"
               "  systemctl stop dfs-metaserver\n"
               "  dfs-metaserver-restore --data-dir /var/lib/dfs/meta \\\n"
               "      /backup/meta-20261127T100000Z-81234.lmdb\n"
               "  systemctl start dfs-metaserver\n"
               "or, from a metalogger's copy (stop the metalogger first):\n"
               "  dfs-metaserver-restore --data-dir /var/lib/dfs/meta /var/lib/dfs/metalogger")
    parser.add_argument("--data-dir", required=True, type=Path, metavar="DIR",
                        help="the metaserver's --data-dir; it must not be serving")
    parser.add_argument("--hold", type=float, default=DEFAULT_HOLD, metavar="SECONDS",
                        help="keep chunks that no file in the backup refers to for this long "
                             "before they are deleted (default: 7 days), so that going back "
                             "to the database set aside loses nothing")
    parser.add_argument("backup", type=Path,
                        help="the backup file (meta-*.lmdb), or the --data-dir of a stopped "
                             "dfs-metalogger")
    args = parser.parse_args(argv)
    if args.hold < 0:
        parser.error("--hold must not be negative")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logs.setup("warning")
    try:
        kept = restore(args.data_dir, args.backup, args.hold)
    except (DfsError, OSError) as exc:
        print(f"dfs-metaserver-restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored {args.backup} into {args.data_dir}; start the metaserver"
          + (f" (the old database is in {kept})" if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
