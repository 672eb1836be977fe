"""The LMDB environment, typed access to its databases, and group commit.

Every mutation is a function of a `Tx`. Mutations queue to one writer thread,
which applies everything queued so far in a single LMDB write transaction
(each mutation in a nested transaction, so a failing one rolls
back alone), syncs once, and only then lets the callers reply. Durability per
reply is unchanged; the cost of the sync is shared by the whole batch.

Each transaction that changes anything is numbered (the `log_seq` counter, in
the transaction itself). While `log_wanted`, its puts and deletes, in order,
also become a record in the `changelog` table, written in that same
transaction and so as durable as the changes: what a metalogger applies to
keep an exact copy (changelog.py, metalogger.py), across restarts of the
metaserver too. The table keeps the newest `log_keep` bytes of records.
"""

import errno
import os
import queue
import secrets
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import lmdb
import msgpack
import trio

from dfs import logs
from dfs.errors import DfsError
from dfs.lockfile import lock_folder

from .records import (Chunk, ChunkServerRecord, Dentry, Inode, Quota, SessionRecord,
                      StoredReply, pack, unpack)

log = logs.get_logger("metaserver")

U64 = struct.Struct(">Q")
U64x2 = struct.Struct(">QQ")

DATABASES = ("inodes", "dentries", "dirindex", "chunkmap", "chunks", "xattrs",
             "chunkservers", "quotas", "sessions", "orphans", "counters", "gc",
             "replies", "reply_times", "epochs", "changelog")
# Not part of what a record or a metalogger's copy carries (see above).
CHANGELOG = "changelog"
# The LMDB environment's folder inside a metaserver's or metalogger's --data-dir.
DATABASE = "meta.lmdb"

# How long a request token is remembered; a client retries within seconds.
REPLY_TTL = 600.0

# Tokens are LMDB keys, which must be short.
MAX_TOKEN = 128

# The number of the last committed transaction that changed anything, and the
# history it belongs to: a random id that a restore replaces, so numbers from
# before a restore are never taken for numbers after it.
LOG_SEQ = "log_seq"
LOG_HISTORY = "log_history"
# Made with the database and kept through restores: chunk servers remember it,
# and refuse a database that is not their cluster's (cluster.py).
CLUSTER_ID = "cluster_id"
# Beside the counters: the inode numbers a session was handed to create files
# with before the metaserver hears of them (service.inode_grant).
INODE_GRANT = b"inode_grant:%d"
DB_INDEX = {name: index for index, name in enumerate(DATABASES)}

# A record is cut into parts of about this size, each sent whole, stored
# under (seq, part index) as one byte (1 on the last part) and the packed changes.
PART_BYTES = 1 << 20

LOG_PIN_FACTOR = 4

# Bounds how much a writer applies in one transaction, so one batch's latency
# stays bounded under a flood of requests.
MAX_BATCH = 512


def u64(n: int) -> bytes:
    try:
        return U64.pack(n)
    except struct.error:
        raise DfsError(errno.EINVAL, f"{n} is not a valid id") from None


def u64x2(a: int, b: int) -> bytes:
    try:
        return U64x2.pack(a, b)
    except struct.error:
        raise DfsError(errno.EINVAL, f"({a}, {b}) is not a valid pair of ids") from None


def read_u64(data: bytes, offset: int = 0) -> int:
    return U64.unpack_from(data, offset)[0]


class Tx:
    """One LMDB transaction with typed accessors.

    Inodes are cached per transaction so two names for one inode (a rename
    within one directory) are the same object; changed inodes are written by
    `flush`.
    """

    def __init__(self, txn: lmdb.Transaction, dbs: dict, record: bool = False):
        self.txn = txn
        self.db = dbs
        self._inodes: dict[int, Inode] = {}
        self._dirty: set[int] = set()
        self.changed = False
        # With `record`, every put and delete, in order, as (database index,
        # key, value or None); kept only while a metalogger may want them,
        # since a large transaction's would take as much memory again.
        self.changes: list[tuple[int, bytes, bytes | None]] | None = [] if record else None
        # The folders this transaction added names to (see dirleases.py).
        self.named: set[int] = set()

    # --- generic helpers ---------------------------------------------------
    def _get(self, db: str, key: bytes):
        return self.txn.get(key, db=self.db[db])

    def _put(self, db: str, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self.db[db])
        self.changed = True
        if self.changes is not None:
            self.changes.append((DB_INDEX[db], key, value))

    def _delete(self, db: str, key: bytes) -> bool:
        if not self.txn.delete(key, db=self.db[db]):
            return False
        self.changed = True
        if self.changes is not None:
            self.changes.append((DB_INDEX[db], key, None))
        return True

    def scan(self, db: str, prefix: bytes = b"", start: bytes | None = None):
        """Yield (key, value) for keys starting with `prefix`, from `start` on."""
        cursor = self.txn.cursor(db=self.db[db])
        if not cursor.set_range(start if start is not None else prefix):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            yield key, value

    def next_id(self, name: str, count: int = 1) -> int:
        """The first of `count` ids never handed out before."""
        key = name.encode()
        raw = self._get("counters", key)
        value = read_u64(raw) if raw else 1
        self._put("counters", key, u64(value + count))
        return value

    def counter(self, name: str) -> int:
        raw = self._get("counters", name.encode())
        return read_u64(raw) if raw else 0

    def put_counter(self, name: str, value: int) -> None:
        self._put("counters", name.encode(), u64(value))

    # --- inodes -------------------------------------------------------------
    def sizes(self, inodes) -> dict[int, int]:
        """The size of each of `inodes` that exists."""
        return {ino: inode.size for ino in inodes if (inode := self.get_inode(ino))}

    def get_inode(self, ino: int) -> Inode | None:
        inode = self._inodes.get(ino)
        if inode is None:
            raw = self._get("inodes", u64(ino))
            if raw is None:
                return None
            inode = self._inodes[ino] = unpack(Inode, raw)
        return inode

    def inode(self, ino: int) -> Inode:
        inode = self.get_inode(ino)
        if inode is None:
            raise DfsError(errno.ENOENT, f"no inode {ino}")
        return inode

    def directory(self, ino: int) -> Inode:
        inode = self.inode(ino)
        if not inode.is_dir:
            raise DfsError(errno.ENOTDIR, f"inode {ino} is not a directory")
        return inode

    def touch(self, *inodes: Inode) -> None:
        for inode in inodes:
            self._inodes[inode.ino] = inode
            self._dirty.add(inode.ino)

    def all_inodes(self):
        for _, value in self.scan("inodes"):
            yield unpack(Inode, value)

    def drop_inode(self, ino: int) -> None:
        self._inodes.pop(ino, None)
        self._dirty.discard(ino)
        self._delete("inodes", u64(ino))

    def changed_dirs(self) -> list[Inode]:
        """The folders this transaction has changed (or made) so far, by inode number."""
        return [self._inodes[ino] for ino in sorted(self._dirty) if self._inodes[ino].is_dir]

    def flush(self) -> None:
        for ino in self._dirty:
            self._put("inodes", u64(ino), pack(self._inodes[ino]))
        self._dirty.clear()

    # --- directory entries --------------------------------------------------
    def dentry(self, parent: int, name: bytes) -> Dentry | None:
        raw = self._get("dentries", u64(parent) + name)
        return unpack(Dentry, raw) if raw else None

    def put_dentry(self, parent: int, name: bytes, dentry: Dentry) -> None:
        self.named.add(parent)
        self._put("dentries", u64(parent) + name, pack(dentry))
        self._put("dirindex", u64x2(parent, dentry.cookie), name)

    def delete_dentry(self, parent: int, name: bytes, dentry: Dentry) -> None:
        self._delete("dentries", u64(parent) + name)
        self._delete("dirindex", u64x2(parent, dentry.cookie))

    def has_entries(self, ino: int) -> bool:
        return next(self.scan("dentries", u64(ino)), None) is not None

    def subtree(self, ino: int):
        """Yield every inode beneath directory `ino` once (a file with several
        links inside it, once)."""
        seen = set()
        stack = [ino]
        while stack:
            parent = stack.pop()
            for _, name in self.entries_after(parent, 0):
                dentry = self.dentry(parent, name)
                if dentry is None or dentry.ino in seen:
                    continue
                seen.add(dentry.ino)
                child = self.inode(dentry.ino)
                yield child
                if child.is_dir:
                    stack.append(child.ino)

    def entries_after(self, ino: int, cookie: int):
        """Yield (cookie, name) of a directory's entries after `cookie`, in order."""
        for key, name in self.scan("dirindex", u64(ino), u64x2(ino, cookie + 1)):
            yield read_u64(key, 8), name

    # --- chunk maps and chunks ---------------------------------------------
    def chunk_id(self, ino: int, index: int) -> int:
        raw = self._get("chunkmap", u64x2(ino, index))
        return read_u64(raw) if raw else 0

    def map_chunk(self, ino: int, index: int, chunk_id: int) -> None:
        self._put("chunkmap", u64x2(ino, index), u64(chunk_id))

    def unmap_chunk(self, ino: int, index: int) -> None:
        self._delete("chunkmap", u64x2(ino, index))

    def chunks_of(self, ino: int, first_index: int = 0):
        """Yield (index, chunk id) of a file's chunks from `first_index` on."""
        for key, value in self.scan("chunkmap", u64(ino), u64x2(ino, first_index)):
            yield read_u64(key, 8), read_u64(value)

    def chunk(self, chunk_id: int) -> Chunk | None:
        raw = self._get("chunks", u64(chunk_id))
        return unpack(Chunk, raw) if raw else None

    def put_chunk(self, chunk_id: int, chunk: Chunk) -> None:
        self._put("chunks", u64(chunk_id), pack(chunk))

    def delete_chunk(self, chunk_id: int) -> None:
        self._delete("chunks", u64(chunk_id))

    def all_chunks(self, after: int = 0):
        """Yield (chunk id, Chunk) in id order, from the first id above `after`."""
        for key, value in self.scan("chunks", b"", u64(after + 1)):
            yield read_u64(key), unpack(Chunk, value)

    # --- garbage: replicas a chunk server should delete ----------------------
    def add_garbage(self, csid: int, chunk_id: int) -> None:
        self._put("gc", u64x2(csid, chunk_id), b"")

    def garbage_of(self, csid: int, limit: int | None = None) -> list[int]:
        found = []
        for key, _ in self.scan("gc", u64(csid)):
            found.append(read_u64(key, 8))
            if limit is not None and len(found) >= limit:
                break
        return found

    def has_garbage(self, csid: int, chunk_id: int) -> bool:
        return self._get("gc", u64x2(csid, chunk_id)) is not None

    def clear_garbage(self, csid: int, chunk_id: int) -> None:
        self._delete("gc", u64x2(csid, chunk_id))

    # --- xattrs ---------------------------------------------------------------
    def xattr(self, ino: int, name: bytes) -> bytes | None:
        return self._get("xattrs", u64(ino) + name)

    def put_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self._put("xattrs", u64(ino) + name, value)

    def delete_xattr(self, ino: int, name: bytes) -> bool:
        return self._delete("xattrs", u64(ino) + name)

    def xattr_names(self, ino: int) -> list[bytes]:
        return [key[8:] for key, _ in self.scan("xattrs", u64(ino))]

    # --- quotas ---------------------------------------------------------------
    def quota(self, ino: int) -> Quota | None:
        raw = self._get("quotas", u64(ino))
        return unpack(Quota, raw) if raw else None

    def put_quota(self, ino: int, quota: Quota) -> None:
        self._put("quotas", u64(ino), pack(quota))

    def delete_quota(self, ino: int) -> None:
        self._delete("quotas", u64(ino))

    def all_quotas(self):
        for key, value in self.scan("quotas"):
            yield read_u64(key), unpack(Quota, value)

    # --- attachment epochs (fences.py) ----------------------------------------
    def epoch(self, ino: int) -> int:
        raw = self._get("epochs", u64(ino))
        return read_u64(raw) if raw else 0

    def put_epoch(self, ino: int, epoch: int) -> None:
        self._put("epochs", u64(ino), u64(epoch))

    def delete_epoch(self, ino: int) -> None:
        self._delete("epochs", u64(ino))

    def all_epochs(self):
        for key, value in self.scan("epochs"):
            yield read_u64(key), read_u64(value)

    # --- sessions, opens and orphans -----------------------------------------
    def session(self, sid: int) -> SessionRecord | None:
        raw = self._get("sessions", u64(sid))
        return unpack(SessionRecord, raw) if raw else None

    def put_session(self, sid: int, record: SessionRecord) -> None:
        self._put("sessions", u64(sid), pack(record))

    def delete_session(self, sid: int) -> None:
        self._delete("sessions", u64(sid))

    def inode_grant(self, sid: int) -> tuple[int, int] | None:
        """[first, end) of the inode numbers handed to session `sid` (inode_grant)."""
        raw = self._get("counters", INODE_GRANT % sid)
        return U64x2.unpack(raw) if raw else None

    def put_inode_grant(self, sid: int, first: int, end: int) -> None:
        self._put("counters", INODE_GRANT % sid, u64x2(first, end))

    def drop_inode_grant(self, sid: int) -> None:
        self._delete("counters", INODE_GRANT % sid)

    def all_sessions(self):
        for key, value in self.scan("sessions"):
            yield read_u64(key), unpack(SessionRecord, value)

    def orphan_keepers(self, ino: int) -> set[int] | None:
        """The sessions keeping unlinked inode `ino` alive, or None if it is no orphan."""
        raw = self._get("orphans", u64(ino))
        if raw is None:
            return None
        # An empty value is the format before keepers were recorded.
        return set(msgpack.unpackb(raw)) if raw else set()

    def put_orphan(self, ino: int, keepers: set[int]) -> None:
        self._put("orphans", u64(ino), msgpack.packb(sorted(keepers)))

    def all_orphans(self):
        for key, value in self.scan("orphans"):
            yield read_u64(key), (set(msgpack.unpackb(value)) if value else set())

    def remove_orphan(self, ino: int) -> None:
        self._delete("orphans", u64(ino))

    # --- chunk servers --------------------------------------------------------
    def chunkserver(self, csid: int) -> ChunkServerRecord | None:
        raw = self._get("chunkservers", u64(csid))
        return unpack(ChunkServerRecord, raw) if raw else None

    def put_chunkserver(self, csid: int, record: ChunkServerRecord) -> None:
        self._put("chunkservers", u64(csid), pack(record))

    def delete_chunkserver(self, csid: int) -> None:
        self._delete("chunkservers", u64(csid))

    def all_chunkservers(self):
        for key, value in self.scan("chunkservers"):
            yield read_u64(key), unpack(ChunkServerRecord, value)

    # --- remembered replies ---------------------------------------------------
    def stored_reply(self, token: bytes) -> StoredReply | None:
        raw = self._get("replies", token)
        return unpack(StoredReply, raw) if raw else None

    def store_reply(self, token: bytes, reply: StoredReply) -> None:
        self._put("replies", token, pack(reply))
        self._put("reply_times", struct.pack(">d", reply.created) + token, b"")

    def expire_replies(self, before: float) -> int:
        expired = []
        for key, _ in self.scan("reply_times"):
            if struct.unpack_from(">d", key)[0] >= before:
                break
            expired.append(key)
        for key in expired:
            self._delete("reply_times", key)
            self._delete("replies", key[8:])
        return len(expired)


@dataclass
class _Job:
    fn: Callable[[Tx], object]
    token: bytes | None
    done: trio.Event = field(default_factory=trio.Event)
    named: set[int] = field(default_factory=set)
    result: object = None
    error: BaseException | None = None


def random_id(tx: Tx, name: str, keep: bool = False) -> int:
    """Set counter `name` to a new random id (with `keep`, only if it has none
    yet); return its value."""
    if not (keep and tx.counter(name)):
        tx.put_counter(name, secrets.randbits(62) + 1)
    return tx.counter(name)


def begin_history(tx: Tx, keep: bool = False) -> None:
    """Give the database a new history (see LOG_HISTORY), or with `keep` one
    only if it has none yet."""
    random_id(tx, LOG_HISTORY, keep)


def _parts(changes: list) -> list[bytes]:
    """`changes` packed into parts of about PART_BYTES each."""
    parts, part, size = [], [], 0
    for change in changes:
        part.append(change)
        size += len(change[1]) + len(change[2] or b"")
        if size >= PART_BYTES:
            parts.append(msgpack.packb(part))
            part, size = [], 0
    if part:
        parts.append(msgpack.packb(part))
    return parts


def log_entries(tx: Tx, after: int, part: int):
    """Yield (seq, index, last, data) of the records in the changelog table
    from part `part` of commit `after` + 1 on, while they follow each other."""
    expected = (after + 1, part)
    for key, value in tx.scan(CHANGELOG, start=u64x2(*expected)):
        seq, index = U64x2.unpack(key)
        if (seq, index) != expected:
            return
        last = value[0] == 1
        yield seq, index, last, value[1:]
        expected = (seq + 1, 0) if last else (seq, index + 1)


def drop_log(tx: Tx) -> None:
    """Empty the changelog table."""
    tx.txn.drop(tx.db[CHANGELOG], delete=False)


def lock_data_dir(data_dir: Path, what: str = "metaserver") -> int:
    """Take DIR/meta.lock while the returned descriptor is open (EBUSY if
    taken): two metaservers on one database would each trust their own
    memory of sessions, leases and chunk versions."""
    return lock_folder(data_dir, "meta.lock", what)


class Store:
    def __init__(self, data_dir: Path, map_size: int = 64 << 30, lock: int | None = None):
        """Open DIR/meta.lmdb, taking DIR's lock unless the caller holds it (`lock`)."""
        self._lock = lock_data_dir(data_dir) if lock is None else None
        self.env = lmdb.open(str(data_dir / DATABASE), map_size=map_size,
                             max_dbs=len(DATABASES), sync=True, metasync=True,
                             max_readers=512)
        self.dbs = {name: self.env.open_db(name.encode()) for name in DATABASES}
        # Set by changelog.py; until then, records are kept if some were (a
        # metalogger followed before a restart and may come back).
        with self.env.begin() as txn:
            self.log_wanted = txn.stat(self.dbs[CHANGELOG])["entries"] > 0
        self.log_keep = 32 << 20
        # While a copy made at this commit is being read, records after it are
        # let go only past LOG_PIN_FACTOR times log_keep (a reader that falls
        # behind them could never catch up).
        self.log_pin: int | None = None
        self._log_bytes: int | None = None
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stopping = False
        # Batches the writer thread has begun, and (on the trio side) finished.
        self._started = 0
        self.batches = 0
        self._finished = trio.Event()
        # Called on the event loop with the number of each numbered commit,
        # in order, once it is durable.
        self.on_commit: Callable[[int], None] | None = None
        # Awaited with the folders a mutation added names to, once it is
        # durable and before `write` returns (dirleases.py).
        self.on_named: Callable[[set[int]], Awaitable[None]] | None = None

    def read(self, fn: Callable[[Tx], object]):
        """Run `fn` in a read-only snapshot (cheap: no I/O waits, run inline)."""
        with self.env.begin() as txn:
            return fn(Tx(txn, self.dbs))

    async def read_in_thread(self, fn: Callable[[Tx], object]):
        """Like `read`, for scans long enough to stall other requests."""
        return await trio.to_thread.run_sync(self.read, fn)

    def write_now(self, fn: Callable[[Tx], object]):
        """Apply `fn` synchronously (only before serving starts)."""
        with self.env.begin(write=True) as txn:
            tx = Tx(txn, self.dbs, record=self.log_wanted)
            result = fn(tx)
            tx.flush()
            seq = self._seal(tx)
        if seq is not None and self.on_commit is not None:
            self.on_commit(seq)
        return result

    def size(self) -> int:
        """Bytes of the database file in use."""
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    def position(self) -> tuple[int, int]:
        """(history, seq) of the last commit."""
        def read(tx: Tx) -> tuple[int, int]:
            return tx.counter(LOG_HISTORY), tx.counter(LOG_SEQ)
        return self.read(read)

    def copy_to(self, fd: int, *counters: str) -> tuple[int, list[int]]:
        """Write a compacted copy of the database to `fd` as one read
        transaction sees it; return that transaction's LMDB id and the values
        of `counters` in it."""
        with self.env.begin() as txn:
            tx = Tx(txn, self.dbs)
            self.env.copyfd(fd, compact=True, txn=txn)
            return txn.id(), [tx.counter(name) for name in counters]

    async def write(self, fn: Callable[[Tx], object], token: bytes | None = None):
        """Apply `fn` durably, as part of the next group commit, and return its result.

        With a token, a mutation already applied under it returns the same
        reply (or raises the same error) without running again.
        """
        [(result, error)] = await self.write_many([fn], [token])
        if error is not None:
            raise error
        return result

    async def write_many(self, fns: list[Callable[[Tx], object]],
                         tokens: list[bytes | None]) -> list[tuple[object, DfsError | None]]:
        """`write` of each of `fns` (with the token beside it), queued
        together so that they share a commit; (result, error) of each."""
        for token in tokens:
            if token is not None and not 0 < len(token) <= MAX_TOKEN:
                raise DfsError(errno.EINVAL, f"a request token is 1 to {MAX_TOKEN} bytes")
        if self._stopping:
            raise DfsError(errno.ESHUTDOWN, "the metaserver is shutting down")
        jobs = [_Job(fn, token) for fn, token in zip(fns, tokens)]
        for job in jobs:
            self._queue.put(job)
        named: set[int] = set()
        for job in jobs:
            await job.done.wait()
            named |= job.named
        if named and self.on_named is not None:
            await self.on_named(named)
        return [(job.result, job.error) for job in jobs]

    async def batches_started_done(self) -> None:
        """Wait until every batch the writer has started by now has finished."""
        target = self._started
        while self.batches < target:
            await self._finished.wait()

    async def run_writer(self) -> None:
        """Run the writer thread until `stop` and the queue is drained.

        One long-lived thread rather than a trio.to_thread hand-off per batch:
        it takes jobs straight from a thread-safe queue and only calls back
        into trio to wake the callers, which saves a task switch and a thread
        dispatch per commit."""
        token = trio.lowlevel.current_trio_token()
        stopped = trio.Event()
        thread = threading.Thread(target=self._writer_thread, args=(token, stopped),
                                  name="metaserver-writer", daemon=True)
        thread.start()
        try:
            await stopped.wait()
        finally:
            self.stop()
            with trio.CancelScope(shield=True):
                await stopped.wait()

    def _writer_thread(self, token: trio.lowlevel.TrioToken, stopped: trio.Event) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                batch = [job]
                while len(batch) < MAX_BATCH:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        self._queue.put(None)   # stop after this batch
                        break
                    batch.append(job)
                self._started += 1
                seq = None
                try:
                    seq = self._apply(batch)
                except Exception as exc:
                    log.error("group commit failed", exc_info=True, batch=len(batch))
                    self._log_bytes = None   # what the table holds is read again
                    for failed in batch:
                        failed.result = None
                        failed.error = DfsError(errno.EIO, f"metadata commit failed: {exc}")
                token.run_sync_soon(self._finish, batch, seq)
        finally:
            token.run_sync_soon(stopped.set)

    def _finish(self, batch: list[_Job], seq: int | None) -> None:
        self.batches += 1
        if seq is not None and self.on_commit is not None:
            self.on_commit(seq)
        self._finished.set()
        self._finished = trio.Event()
        for finished in batch:
            finished.done.set()

    def _apply(self, batch: list[_Job]) -> int | None:
        now = time.time()
        with self.env.begin(write=True) as txn:
            record = self.log_wanted
            top = Tx(txn, self.dbs, record)
            for job in batch:
                if job.token is not None:
                    stored = top.stored_reply(job.token)
                    if stored is not None:
                        job.result = stored.result
                        if stored.errno:
                            job.error = DfsError(stored.errno, str(stored.result))
                        continue
                child = self.env.begin(write=True, parent=txn)
                tx = Tx(child, self.dbs, record)
                try:
                    job.result = job.fn(tx)
                    tx.flush()
                    child.commit()
                    job.named = tx.named
                    top.changed |= tx.changed
                    if record:
                        top.changes += tx.changes
                except DfsError as exc:
                    child.abort()
                    job.error = exc
                except Exception as exc:
                    child.abort()
                    log.error("mutation failed", exc_info=True)
                    job.error = DfsError(errno.EIO, f"internal error: {exc}")
                # An internal error may pass; a retry of it deserves a fresh try.
                if job.token is not None and not (job.error and job.error.errno == errno.EIO):
                    reply = (StoredReply(now, job.error.errno, job.error.message) if job.error
                             else StoredReply(now, 0, job.result))
                    top.store_reply(job.token, reply)
            return self._seal(top)

    def _seal(self, tx: Tx) -> int | None:
        """Number `tx` if it changed anything, and if it recorded its changes
        add their record to the changelog table; the number, or None. A
        commit not recorded leaves a gap that no metalogger reads across."""
        if not tx.changed:
            return None
        seq = tx.counter(LOG_SEQ) + 1
        tx.put_counter(LOG_SEQ, seq)
        db = self.dbs[CHANGELOG]
        if self._log_bytes is None:
            self._log_bytes = sum(len(value) for _, value in tx.scan(CHANGELOG))
        if tx.changes is None:
            if self._log_bytes and not self.log_wanted:
                drop_log(tx)
                self._log_bytes = 0
            return seq
        parts = _parts(tx.changes)
        for index, data in enumerate(parts):
            value = bytes([index == len(parts) - 1]) + data
            tx.txn.put(u64x2(seq, index), value, db=db)
            self._log_bytes += len(value)
        if self._log_bytes > self.log_keep:
            cursor = tx.txn.cursor(db=db)
            cursor.first()
            while self._log_bytes > self.log_keep:
                oldest = U64x2.unpack(cursor.key())[0]
                pinned = (self.log_pin is not None and oldest > self.log_pin
                          and self._log_bytes <= LOG_PIN_FACTOR * self.log_keep)
                if oldest >= seq or pinned:
                    break
                self._log_bytes -= len(cursor.value())
                cursor.delete()
        return seq

    def stop(self) -> None:
        """No more mutations: the writer applies what is queued, then returns."""
        if not self._stopping:
            self._stopping = True
            self._queue.put(None)

    def close(self) -> None:
        self.env.close()
        if self._lock is not None:
            os.close(self._lock)
