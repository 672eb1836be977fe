"""dfs-metalogger: keep a copy of the metadata on another host, a moment
behind the metaserver, to restore a metaserver whose disk is lost
(dfs-metaserver-restore), as MooseFS's metaloggers do.

It keeps an LMDB database like the metaserver's (DIR/meta.lmdb, under DIR's
lock). It starts from a copy of the metaserver's database (changelog.py),
then applies every commit made after that copy, in order, each commit whole
and synced. The position of the last one applied (its history and number) is
part of the database, so a restarted metalogger goes on where it stopped. A
copy whose next commits the metaserver no longer holds (this metalogger was
stopped too long) or that follows another history (the metaserver was
restored) is replaced by a new copy; the database it replaces is kept as
DIR/meta.lmdb.previous until the next replacement. A new copy is put in place
by renames that a restart completes (`_recover`), so a crash never leaves
the folder without a whole copy.

A copy is never replaced by one that knows less, which is what a metaserver
started on an empty or older disk would hand out: one of its own history
that is behind it, or one of another history that was not restored since
(the restore count tells). Then the metalogger keeps its copy, says so at
every try, and waits to be restored from or moved aside.
"""

import argparse
import errno
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import lmdb
import msgpack
import trio

from dfs import logs, transit
from dfs.backupfetch import read_whole
from dfs.config import (ConfigError, add_log_level_arg, add_secret_file_arg, address_arg,
                        load_secret)
from dfs.durable import fsync_dir
from dfs.errors import DfsError
from dfs.ops import META
from dfs.records import LogCopy
from dfs.rpc import Client
from dfs.shutdown import run_until_signalled

from .restore import RESTORES, check_backup
from .store import (CHANGELOG, DATABASE, DATABASES, LOG_SEQ, Store, Tx, drop_log,
                    lock_data_dir, read_u64)

log = logs.get_logger("metalogger")

WAIT = 10.0
CALL_TIMEOUT = WAIT + 20.0
# Making a copy of a large database takes the metaserver a while.
COPY_TIMEOUT = 1800.0
MAX_BACKOFF = 5.0
# After a full disk here or on the metaserver, ask again only this often.
FULL_BACKOFF = 60.0
REPORT_EVERY = 60.0
# How often a metalogger that keeps its copy (see above) asks again.
REFUSED_RETRY = 60.0
NEW = DATABASE + ".new"
PREVIOUS = DATABASE + ".previous"


class Refused(Exception):
    """The metaserver's copy knows less than the one here, or is of another
    layout."""


def _recover(data_dir: Path) -> None:
    """Finish or undo a replacement of the copy that a crash interrupted:
    NEW is whole and checked once it exists, and DATABASE is renamed away
    only after that, so NEW without DATABASE is to be moved in, and NEW
    beside DATABASE is to be dropped."""
    new, database = data_dir / NEW, data_dir / DATABASE
    if not new.exists():
        return
    if database.exists():
        shutil.rmtree(new)
    else:
        os.rename(new, database)
        log.warning("finished putting a new copy in place after a crash",
                    data_dir=str(data_dir))
    fsync_dir(data_dir)


class MetaLogger:
    def __init__(self, meta: str, secret: bytes, data_dir: Path, name: str):
        self.meta = meta
        self.data_dir = data_dir
        self.name = name
        # The metaserver's lock: neither may use the other's folder meanwhile.
        self.lock = lock_data_dir(data_dir, "metalogger")
        _recover(data_dir)
        self.store = Store(data_dir, lock=self.lock)
        self.client = Client(meta, secret, META)
        # The parts received so far of the commit after the last one applied.
        self.pending: list[bytes] = []
        self.applied = 0
        self.must_copy = self.store.position()[0] == 0
        if self.must_copy:
            log.info("no copy of the metadata here yet: copying the metaserver's database",
                     data_dir=str(data_dir))

    async def run(self) -> None:
        delay = 0.1
        reported = time.monotonic()
        behind = 0
        while True:
            try:
                if self.must_copy:
                    await self._copy()
                    self.must_copy = False
                behind = await self._follow()
                delay = 0.1
            except Refused as exc:
                log.error("keeping this copy of the metadata", reason=str(exc),
                          retry_in=REFUSED_RETRY)
                await trio.sleep(REFUSED_RETRY)
                continue
            except DfsError as exc:
                if exc.errno == errno.ESTALE and not self.must_copy:
                    log.warning("copying the metaserver's database", reason=exc.message)
                    self.pending.clear()
                    self.must_copy = True
                    continue
                if exc.errno == errno.EPROTO:
                    self.pending.clear()
                wait = FULL_BACKOFF if exc.errno == errno.ENOSPC else delay
                log.warning("cannot follow the metaserver", meta=self.meta, error=exc.message,
                            retry_in=wait)
                await trio.sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            except (OSError, lmdb.Error) as exc:
                log.error("cannot write the copy", data_dir=str(self.data_dir), error=str(exc),
                          retry_in=FULL_BACKOFF)
                await trio.sleep(FULL_BACKOFF)
                continue
            if time.monotonic() - reported >= REPORT_EVERY:
                reported = time.monotonic()
                log.info("following", seq=self.store.position()[1], behind=behind,
                         applied=self.applied)

    async def _follow(self) -> int:
        """Apply the commits the next read brings; return how many are still to come."""
        history, seq = self.store.position()
        reply = await self.client.call("log_read", timeout=CALL_TIMEOUT, follower=self.name,
                                       history=history, after=seq, part=len(self.pending),
                                       wait=WAIT)
        if reply.get("tables") != list(DATABASES):
            raise Refused(f"the metaserver's tables ({reply.get('tables')}) are not this "
                          f"metalogger's ({list(DATABASES)}): run the same dfs version on both")
        expected = (seq + 1, len(self.pending))
        # Parts join self.pending only once the commits before them are
        # applied: the next read asks from the position the copy holds.
        pending = list(self.pending)
        commits = []
        crcs = reply.get("crcs") or [None] * len(reply["parts"])
        if len(crcs) != len(reply["parts"]):
            raise DfsError(errno.EPROTO, "the metaserver sent parts and CRCs that do not pair")
        for part, crc in zip(reply["parts"], crcs):
            if not (isinstance(part, list) and len(part) == 4 and tuple(part[:2]) == expected
                    and isinstance(part[3], bytes)):
                raise DfsError(errno.EPROTO, f"the metaserver sent {part[:3]!r} where part "
                                             f"{expected} was due")
            transit.check(part[3], crc, f"commit {part[0]} part {part[1]}")
            pending.append(part[3])
            if part[2]:
                commits.append((part[0], pending))
                pending = []
                expected = (part[0] + 1, 0)
            else:
                expected = (part[0], part[1] + 1)
        if commits:
            await trio.to_thread.run_sync(self._apply, commits)
            self.applied += len(commits)
        self.pending = pending
        return max(reply["seq"] - (expected[0] - 1), 0)

    def _apply(self, commits: list[tuple[int, list[bytes]]]) -> None:
        """Apply whole commits in one synced transaction, checking that they
        bring the database to the last one's number."""
        dbs = [self.store.dbs[name] for name in DATABASES if name != CHANGELOG]
        try:
            with self.store.env.begin(write=True) as txn:
                for seq, parts in commits:
                    for data in parts:
                        for db, key, value in msgpack.unpackb(data):
                            if not 0 <= db < len(dbs):
                                raise DfsError(errno.EPROTO, f"commit {seq} names table {db}")
                            if value is None:
                                if not txn.delete(key, db=dbs[db]):
                                    # What it deletes was never here: the copy
                                    # went astray somewhere; start afresh.
                                    raise DfsError(errno.ESTALE, f"commit {seq} deletes from "
                                                   f"{DATABASES[db]} what this copy lacks")
                            else:
                                txn.put(key, value, db=dbs[db])
                raw = txn.get(LOG_SEQ.encode(), db=self.store.dbs["counters"])
                if raw is None or read_u64(raw) != commits[-1][0]:
                    raise DfsError(errno.EPROTO, f"commit {commits[-1][0]} did not bring the "
                                                 "copy to its number")
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
            raise DfsError(errno.EPROTO, f"a malformed commit: {exc}") from None
        except lmdb.MapFullError:
            raise DfsError(errno.ENOSPC, "the copy's database is full") from None
        except lmdb.Error as exc:
            raise DfsError(errno.EIO, f"cannot apply commits: {exc}") from None

    async def _copy(self) -> None:
        """Replace the database with a new copy of the metaserver's."""
        copy = LogCopy.from_wire(await self.client.call("log_copy", timeout=COPY_TIMEOUT,
                                                        follower=self.name))
        self._check_newer(copy)
        incoming = self.data_dir / "incoming.partial"
        started = reported = time.monotonic()
        try:
            with open(incoming, "wb") as out:
                def piece(_: bytes) -> None:
                    nonlocal reported
                    if time.monotonic() - reported >= 5.0:
                        reported = time.monotonic()
                        log.info("copying", copy=copy.name, done=out.tell(), size=copy.size)
                await read_whole(self.client, "log_copy_read", copy.name, copy.size, out,
                                 piece, timeout=CALL_TIMEOUT, follower=self.name)
                out.flush()
                os.fsync(out.fileno())
            held = await trio.to_thread.run_sync(check_backup, incoming)
            if (held["history"], held["seq"]) != (copy.history, copy.seq):
                raise DfsError(errno.EIO, f"copy {copy.name} holds position "
                                          f"{held['history']:x}/{held['seq']}, not the one "
                                          "the metaserver named")
            await trio.to_thread.run_sync(self._install, incoming)
        finally:
            incoming.unlink(missing_ok=True)
        log.info("copied the metaserver's database", copy=copy.name, size=copy.size,
                 seq=copy.seq, seconds=round(time.monotonic() - started, 2))

    def _check_newer(self, copy: LogCopy) -> None:
        """Raise Refused if `copy` knows less than the copy here (see above)."""
        history, seq = self.store.position()
        if not history:
            return
        restores = self.store.read(lambda tx: tx.counter(RESTORES))
        restore_hint = (f"if the metaserver lost its disk, stop it and restore it from this "
                        f"copy (stop this metalogger, then dfs-metaserver-restore --data-dir "
                        f"META_DIR {self.data_dir}); to follow it anyway, stop this "
                        f"metalogger and move {self.data_dir / DATABASE} away")
        if copy.history == history and copy.seq < seq:
            raise Refused(f"the metaserver's database is at commit {copy.seq}, behind this "
                          f"copy's {seq}: it lost commits; {restore_hint}")
        if copy.history != history and copy.restores <= restores:
            raise Refused("the metaserver's database is not the one this copy follows and "
                          "was not restored since: it may have started on an empty or "
                          f"another disk; {restore_hint}")

    def _install(self, incoming: Path) -> None:
        """Put the checked copy `incoming` in place of the database (see _recover)."""
        had_history = self.store.position()[0] != 0
        new = self.data_dir / NEW
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
        os.rename(incoming, new / "data.mdb")
        fsync_dir(new)
        fsync_dir(self.data_dir)
        self.store.close()
        try:
            database = self.data_dir / DATABASE
            if had_history:
                shutil.rmtree(self.data_dir / PREVIOUS, ignore_errors=True)
                os.rename(database, self.data_dir / PREVIOUS)
            else:
                shutil.rmtree(database)
            os.rename(new, database)
            fsync_dir(self.data_dir)
        finally:
            self.store = Store(self.data_dir, lock=self.lock)
        # The metaserver's records came with the copy; here they are dead weight.
        self.store.log_wanted = False
        with self.store.env.begin(write=True) as txn:
            drop_log(Tx(txn, self.store.dbs))

    async def aclose(self) -> None:
        await self.client.aclose()
        self.store.close()
        os.close(self.lock)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dfs-metalogger",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Keep a copy of a dfs cluster's metadata on this host, a moment behind\n"
                    "the metaserver: it copies the metaserver's database once, then applies\n"
                    "every change as it is committed. Run one or two on hosts other than\n"
                    "the metaserver's. If the metaserver's disk is lost, stop the\n"
                    "metalogger and restore its copy: dfs-metaserver-restore --data-dir\n"
                    "META_DIR DIR. `dfs status` shows each metalogger and how far behind\n"
                    "it is.",
        epilog="example: dfs-metalogger --meta meta.example:9400 --data-dir "
               "/var/lib/dfs/metalogger --secret-file /etc/dfs/secret")
    parser.add_argument("--meta", required=True, type=address_arg, metavar="HOST:PORT",
                        help="the metaserver to follow")
    parser.add_argument("--data-dir", required=True, type=Path, metavar="DIR",
                        help="folder for the copy (DIR/meta.lmdb); created if missing")
    add_secret_file_arg(parser)
    parser.add_argument("--name", metavar="NAME",
                        help="how the metaserver lists this metalogger (default: "
                             "HOSTNAME:DIR)")
    add_log_level_arg(parser)
    return parser.parse_args(argv)


async def _serve(logger: MetaLogger) -> None:
    async def start(nursery: trio.Nursery) -> None:
        nursery.start_soon(logger.run)
        log.info("following the metaserver", meta=logger.meta, data_dir=str(logger.data_dir),
                 name=logger.name)

    try:
        await run_until_signalled(log, start)
    finally:
        await logger.aclose()
    log.info("stopped")


def main(argv=None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level)
    data_dir = args.data_dir.resolve()
    try:
        secret = load_secret(args.secret_file)
        data_dir.mkdir(parents=True, exist_ok=True)
        logger = MetaLogger(args.meta, secret, data_dir,
                            args.name or f"{socket.gethostname()}:{data_dir}")
    except (ConfigError, DfsError, OSError) as exc:
        print(f"dfs-metalogger: {exc}", file=sys.stderr)
        return 2
    trio.run(_serve, logger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
