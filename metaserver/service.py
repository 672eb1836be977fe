"""The metaserver's operations: one handler per operation in dfs.ops.META and
META_CS, plus the background duties (expiring sessions and request tokens,
re-replication).
"""

import errno
import stat
import time

import trio

from dfs import logs, transit
from dfs.errors import DfsError
from dfs.ops import BLOCK_SIZE, META, RENAME_NOREPLACE
from dfs.records import QuotaInfo
from dfs.rpc import peer_host

from . import factors, quotas, restore, snapshots, trash
from .backups import Backups
from .changelog import ChangeLog
from .chunkpool import ChunkPool
from .cluster import REPLICATION_INTERVAL, Cluster
from .context import Context
from .datapath import DataPath
from .dirleases import LEASE
from .dirleases import writer as lease_writer
from .namespace import NAME_MAX, check_changes
from .quotas import ROOT_INO
from .fences import Binding
from .fsck import Fsck
from .records import Inode, Quota, SessionRecord
from .replicas import POLL, KeyedLocks, Replicas
from .reports import Reports
from .store import CLUSTER_ID, REPLY_TTL, Tx, begin_history, random_id

log = logs.get_logger("metaserver")

STATFS_BSIZE = 4096
# What statfs reports as the inode count when nothing limits it.
MANY_FILES = 1 << 40
# The operations a fenced session is refused (see fences.py): every change.
CHANGES = ("setattr mknod mkdir symlink link unlink rmdir rename setxattr removexattr "
           "chunk_write reserve commit changes_ahead").split()
# Operations that look at or change a whole tree (or a folder that some name
# stands for): they wait for every other session's exclusive folder lease to be
# let go of (dirleases.py), not only for those on the folders they name.
TREE_OPS = "rmdir rename snapshot quota_set fence summary backup_take".split()
# Inode numbers handed to a mount at once (inode_grant), and changes in one
# changes_ahead, at most.
MAX_INODE_GRANT = 4096
MAX_AHEAD = 1024
# The fields of each kind of changes_ahead item, after its kind.
AHEAD_ITEMS = {"create": (int, bytes, int, int, int, int, int, bool),
               "mkdir": (int, bytes, int, int, int, int, int),
               "unlink": (int, bytes, int),
               "rename": (int, bytes, bytes, int)}


class MetaService:
    def __init__(self, ctx: Context, backups: Backups, changelog: ChangeLog):
        self.ctx = ctx
        self.backups = backups
        self.changelog = changelog
        self.ns = ctx.namespace
        self.replicas = Replicas(ctx)
        self.pool = ChunkPool(ctx, self.replicas)
        self.cluster = Cluster(ctx, self.replicas, self.pool)
        self.data = DataPath(ctx, self.replicas, self.pool, self.cluster.settled)
        self.fsck = Fsck(ctx, self.replicas)
        self.reports = Reports(ctx)
        self.fencing = KeyedLocks()
        ctx.store.on_named = ctx.dirleases.recall

    def start(self) -> None:
        """Prepare the store for serving: the root exists, old sessions get a fresh
        TTL and are presumed to hold what they had open until they re-announce."""
        def init(tx: Tx) -> dict[int, SessionRecord]:
            if tx.get_inode(ROOT_INO) is None:
                now = time.time_ns()
                tx.next_id("inode")
                tx.touch(Inode(ROOT_INO, stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, now, now, now,
                               ROOT_INO))
                log.info("created the root directory", ino=ROOT_INO)
            begin_history(tx, keep=True)
            random_id(tx, CLUSTER_ID, keep=True)
            sessions = dict(tx.all_sessions())
            sids = set(sessions)
            for ino, keepers in list(tx.all_orphans()):
                inode = tx.get_inode(ino)
                if inode is None:
                    tx.remove_orphan(ino)
                    continue
                # A keeper whose session is gone no longer counts; an orphan
                # recorded without keepers (older format) is kept by everyone.
                self.ns.collect(tx, inode, keepers & sids if keepers else sids)
            self.ctx.opens.restored.update(sids)
            self.ctx.fences.load(tx.all_epochs(), {
                sid: Binding(record.fence_ino, record.fence_epoch)
                for sid, record in sessions.items() if record.fence_ino},
                restore.floor(tx))
            return sessions

        restored = self.ctx.store.write_now(init)
        for sid in restored:
            self.ctx.sessions.start(sid)
        if restored:
            creators = self._read(lambda tx: [sid for sid in restored
                                              if tx.inode_grant(sid) is not None])
            self.ctx.dirleases.restored(restored, creators)
        log.info("restored sessions hold their files until they re-announce",
                 sessions=len(self.ctx.opens.restored), orphans=len(self.ctx.opens.orphans))
        self.cluster.load()
        self.changelog.attach()

    def handlers(self) -> dict:
        names = ("session_open cluster_check session_renew session_close lookup resolve "
                 "getattr setattr "
                 "mknod mkdir symlink link unlink rmdir rename readlink readdir open release "
                 "setxattr getxattr listxattr removexattr statfs quota_set quota_get "
                 "quota_list replicas_set replicas_get status fence snapshot backup_take "
                 "backup_list backup_read log_read log_copy log_copy_read dir_lease "
                 "dir_poll inode_grant changes_ahead").split()
        table = {name: getattr(self, name) for name in names}
        for name in ("chunk_read", "chunk_write", "reserve", "commit"):
            table[name] = getattr(self.data, name)
        for name in ("cs_register", "cs_heartbeat", "cs_bad_chunk", "chunkserver_drain",
                     "chunkserver_remove"):
            table[name] = getattr(self.cluster, name)
        for name in ("fsck_chunks", "fsck_servers"):
            table[name] = getattr(self.fsck, name)
        for name in ("session_list", "chunk_list", "summary"):
            table[name] = getattr(self.reports, name)
        for name, op in META.items():
            # A mount sends the files it made ahead before it re-announces.
            if "session" in op.fields and name != "changes_ahead":
                table[name] = self._speaking(table[name])
        for name in CHANGES:
            table[name] = self._fenced(table[name])
        for name, op in META.items():
            if name in TREE_OPS or {"parent", "newparent", "ino", "items"} & set(op.fields):
                table[name] = self._settling(table[name], name in TREE_OPS)
        return table

    async def run_background(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._every, min(1.0, self.ctx.settings.session_ttl / 4),
                               self._expire_sessions, "session expiry")
            nursery.start_soon(self._every, 60.0, self._expire_replies, "token expiry")
            nursery.start_soon(self._every, REPLICATION_INTERVAL, self.cluster.replicate,
                               "re-replication")
            nursery.start_soon(self.backups.run)
            nursery.start_soon(self.changelog.run)
            # Even without a trash time, now and then: what an earlier run kept
            # is due.
            keep = self.ctx.settings.trash_seconds
            nursery.start_soon(self._every, min(300.0, max(0.5, keep / 4)) if keep else 300.0,
                               self._expire_trash, "trash expiry")
            nursery.start_soon(self.cluster.settle)
            nursery.start_soon(self.pool.run)

    @staticmethod
    async def _every(interval: float, duty, name: str) -> None:
        """Run `duty` every `interval` seconds; a failed round is logged, not fatal."""
        while True:
            await trio.sleep(interval)
            try:
                await duty()
            except DfsError as exc:
                log.error("background duty failed", duty=name, error=str(exc))

    def _read(self, fn):
        return self.ctx.store.read(fn)

    async def _write(self, fn, token: bytes | None = None):
        return await self.ctx.store.write(fn, token)

    # --- sessions ---------------------------------------------------------------
    async def session_open(self, host: str, mountpoint: str, pid: int,
                           fence: list | None) -> dict:
        binding = None
        if fence is not None:
            if len(fence) != 2 or not all(type(n) is int and n > 0 for n in fence):
                raise DfsError(errno.EINVAL, "session_open: fence must be [directory ino, "
                                             "epoch], both positive integers")
            binding = Binding(*fence)
            if not self._read(lambda tx: tx.inode(binding.ino)).is_dir:
                raise DfsError(errno.ENOTDIR, f"fence: inode {binding.ino} is not a directory")
            if self.ctx.fences.lost(binding):
                await self._advance(binding.ino, binding.epoch)
            self.ctx.fences.check_binding(binding)

        def open_session(tx: Tx) -> int:
            sid = tx.next_id("session")
            tx.put_session(sid, SessionRecord(host, mountpoint, pid, *(fence or (0, 0)),
                                              int(time.time())))
            return sid

        sid = await self._write(open_session)
        self.ctx.sessions.start(sid)
        if binding is not None:
            # Should the epoch have moved meanwhile, every change is refused anyway.
            self.ctx.fences.bind(sid, binding)
        log.info("session opened", session=sid, host=host, mountpoint=mountpoint, pid=pid,
                 fence=fence)
        return {"session": sid, "chunk_size": self.ctx.settings.chunk_size,
                "block_size": BLOCK_SIZE, "session_ttl": self.ctx.settings.session_ttl,
                "cluster": self._read(lambda tx: tx.counter(CLUSTER_ID)),
                "zones": self.ctx.registry.zones_from(peer_host())}

    async def cluster_check(self, cluster: int) -> dict:
        ours = self._read(lambda tx: tx.counter(CLUSTER_ID))
        if cluster and cluster != ours:
            raise DfsError(errno.EREMCHG, (
                f"this metaserver's database is cluster {ours:x}'s, not {cluster:x}'s: it "
                "may have started on an empty or another disk; restore its database "
                "(dfs-metaserver-restore), or if this cluster is the one meant, mount "
                "again (with its id as --cluster-id where one is given)"))
        return {"cluster": ours}

    async def session_renew(self, session: int) -> dict:
        self.ctx.sessions.renew(session)
        return {"zones": self.ctx.registry.zones_from(peer_host())}

    async def session_close(self, session: int) -> dict:
        await self._end_session(session)
        log.info("session closed", session=session)
        return {}

    async def _end_session(self, sid: int) -> None:
        self.ctx.sessions.end(sid)
        self.ctx.fences.unbind(sid)
        self.ctx.reservations.drop(sid)
        self.ctx.dirleases.end_session(sid)
        kept = self.ctx.opens.end_session(sid)

        def close(tx: Tx) -> None:
            self._drop_keeper(tx, kept, sid)
            tx.delete_session(sid)
            tx.drop_inode_grant(sid)

        await self._write(close)

    def _speaking(self, handler):
        """`handler` for an operation that names a session. A client
        re-announces what it holds (open with `count`) before anything else
        on a new connection, so any other request naming the session ends its
        restart grace. Any request naming it, a re-announce too, also shows it
        holds no folder lease from before a restart (dirleases.py; as does a
        change it makes, see `_fenced`)."""
        async def handle(**args):
            if args["session"] is not None:
                self.ctx.dirleases.heard(args["session"])
                if args.get("count") is None:
                    await self._spoke(args["session"])
            return await handler(**args)
        return handle

    def _fenced(self, handler):
        """`handler` for a change, refused to a session whose fence moved on;
        `fence` waits for the changes that began before it."""
        async def handle(**args):
            writer = args.pop("writer", None)
            session = writer if writer is not None else args.get("session")
            # Changes made ahead come first on a new connection, maybe in
            # several requests: what follows them shows the session heard.
            if session is not None and "items" not in args:
                self.ctx.dirleases.heard(session)
            # Its leases on the folders it names are its own business; not on
            # others it changes besides (the trash).
            named = _named_folders(args, by_ino=False)
            lease_writer.set((session, named))
            with self.ctx.fences.changing(session), \
                    self.ctx.dirleases.changing(session, named):
                return await handler(**args)
        return handle

    def _settling(self, handler, tree: bool):
        """`handler` for a request that names folders (or looks at trees):
        it waits until no other session holds an exclusive lease on them
        (dirleases.py). The requester is its `writer`, `reader` or `session`."""
        async def handle(**args):
            reader = args.pop("reader", None)
            leases = self.ctx.dirleases
            if leases.exclusive or leases.unheard_creators:
                requester = next((args[key] for key in ("writer", "session")
                                  if args.get(key) is not None), reader)
                if tree:
                    await leases.settle_all(requester)
                else:
                    await leases.settle(requester, _named_folders(args), "items" in args)
            return await handler(**args)
        return handle

    async def _spoke(self, sid: int) -> None:
        """A restored session has re-announced its open files: it stops keeping
        the orphans it did not re-announce."""
        stale = self.ctx.opens.spoke(sid)
        if stale:
            log.info("session re-announced its open files", session=sid,
                     released_orphans=stale)
            await self._write(lambda tx: self._drop_keeper(tx, stale, sid))

    def _drop_keeper(self, tx: Tx, inos: list[int], sid: int) -> None:
        """`sid` no longer keeps these orphans; destroy those nobody keeps."""
        for ino in inos:
            keepers = tx.orphan_keepers(ino)
            inode = tx.get_inode(ino)
            if keepers is None or inode is None:
                continue
            keepers.discard(sid)
            self.ns.collect(tx, inode, keepers)
            if tx.orphan_keepers(ino) is None:
                log.info("orphan destroyed", ino=ino, session=sid)

    async def _expire_sessions(self) -> None:
        for sid in self.ctx.sessions.expired():
            log.warning("session expired", session=sid)
            await self._end_session(sid)

    async def _expire_trash(self) -> None:
        """Delete what has been in the trash longer than the trash time."""
        keep = self.ctx.settings.trash_seconds
        while batch := await self.ctx.store.read_in_thread(
                lambda tx: trash.expired(tx, time.time(), keep)):
            def purge(tx: Tx) -> int:
                now, deleted = time.time_ns(), 0
                for folder, name, is_dir in batch:
                    if tx.dentry(folder, name) is None:
                        continue   # restored or removed meanwhile
                    try:
                        if is_dir:
                            self.ns.rmdir(tx, now, folder, name)
                        else:
                            self.ns.unlink(tx, now, folder, name, keep=False)
                        deleted += 1
                    except DfsError as exc:   # an hour folder someone put a file into
                        log.warning("trash entry not deleted", folder=folder,
                                    name=name.decode(errors="replace"), error=exc.message)
                return deleted

            deleted = await self._write(purge)
            log.info("expired files deleted from the trash", deleted=deleted, due=len(batch))
            if deleted < len(batch):
                return   # the rest waits for the next round

    async def _expire_replies(self) -> None:
        cutoff = time.time() - REPLY_TTL
        await self._write(lambda tx: tx.expire_replies(cutoff))

    # --- directory leases (dirleases.py) ---------------------------------------------
    async def dir_lease(self, session: int, ino: int, exclusive: bool | None) -> dict:
        self.ctx.sessions.check(session)
        leases = self.ctx.dirleases
        exclusive = bool(exclusive) and self._read(lambda tx: _may_create_ahead(tx, ino))
        # Granted before the names are read, with no wait in between: a change
        # committed after the read is answered only once it recalled this grant.
        if exclusive:
            number = await leases.grant_exclusive(session, ino)
        else:
            number = leases.grant(session, ino)

        def read(tx: Tx) -> dict:
            reply = {"names": leases.names(tx, ino), "exclusive": exclusive}
            if exclusive:
                reply["attr"] = self.ns.attr(tx, tx.inode(ino))
            return reply

        try:
            reply = self._read(read)
        except DfsError:
            leases.release(session, [[ino, number]])
            raise
        return {**reply, "number": number, "instance": leases.instance, "lease": LEASE}

    async def inode_grant(self, session: int, count: int) -> dict:
        self.ctx.sessions.check(session)
        if not 0 < count <= MAX_INODE_GRANT:
            raise DfsError(errno.EINVAL, f"inode_grant: count is 1 to {MAX_INODE_GRANT}")

        def grant(tx: Tx) -> int:
            first = tx.next_id("inode", count)
            held = tx.inode_grant(session)
            tx.put_inode_grant(session, held[0] if held else first, first + count)
            return first

        return {"first": await self._write(grant), "count": count}

    async def dir_poll(self, session: int, released: list, wait: float) -> dict:
        self.ctx.sessions.check(session)
        reply = await self.ctx.dirleases.poll(session, released, wait)
        reply["instance"] = self.ctx.dirleases.instance
        reply["lease"] = LEASE
        return reply

    # --- reading the namespace ----------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> dict:
        return self._read(lambda tx: self.ns.lookup(tx, parent, name))

    async def resolve(self, path: bytes) -> dict:
        return self._read(lambda tx: self.ns.resolve(tx, path))

    async def getattr(self, ino: int) -> dict:
        return self._read(lambda tx: self.ns.attr(tx, tx.inode(ino)))

    async def readlink(self, ino: int) -> dict:
        return self._read(lambda tx: self.ns.readlink(tx, ino))

    async def readdir(self, ino: int, offset: int, limit: int) -> dict:
        return self._read(lambda tx: self.ns.readdir(tx, ino, offset, limit))

    async def getxattr(self, ino: int, name: bytes) -> dict:
        return self._read(lambda tx: self.ns.getxattr(tx, ino, name))

    async def listxattr(self, ino: int) -> dict:
        return self._read(lambda tx: self.ns.listxattr(tx, ino))

    # --- changing the namespace -----------------------------------------------------
    def _with_dirs(self, tx: Tx, reply: dict) -> dict:
        """`reply` with the attributes of the folders the change touched, as it left them."""
        reply["dirs"] = [self.ns.attr(tx, inode) for inode in tx.changed_dirs()]
        return reply

    async def setattr(self, ino: int, changes: dict, token: bytes | None) -> dict:
        check_changes(changes)
        if "size" in changes:
            return await self.data.setattr_size(ino, changes, token)
        return await self._write(
            lambda tx: self.ns.setattr(tx, time.time_ns(), ino, changes, {}), token)

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int,
                    session: int | None, token: bytes | None) -> dict:
        if session is not None:
            self.ctx.sessions.check(session)

        def make(tx: Tx) -> dict:
            inode = self.ns.mknod(tx, time.time_ns(), parent, name, mode, rdev, uid, gid)
            if session is not None:
                # Held from inside the transaction, so no unlink can slip in
                # between the creation and the hold.
                self.ctx.opens.hold(inode.ino, session)
            return self._with_dirs(tx, self.ns.attr(tx, inode))

        attr = await self._write(make, token)
        if session is not None:
            # A retry answered from the stored reply, after a restart lost the
            # hold taken above and before the client could re-announce it.
            self.ctx.opens.ensure_held(attr["ino"], session)
            if stat.S_ISREG(attr["mode"]):
                attr["granted"] = self.data.first_grant(attr["ino"], session)
        return attr

    async def changes_ahead(self, session: int, items: list, token: bytes | None) -> dict:
        """Changes a mount made ahead in folders it holds exclusive leases
        on, each applied on its own (one failing fails alone), in order."""
        self.ctx.sessions.check(session)
        if not 0 < len(items) <= MAX_AHEAD:
            raise DfsError(errno.EINVAL, f"changes_ahead: 1 to {MAX_AHEAD} items")
        changes = [_ahead_item(item) for item in items]
        tokens = [None] * len(changes) if token is None else [
            token + index.to_bytes(2, "big") for index in range(len(changes))]
        outcomes = await self.ctx.store.write_many(
            [self._ahead(session, change) for change in changes], tokens)
        results = []
        for change, (reply, error) in zip(changes, outcomes):
            if error is not None:
                results.append([error.errno, error.message])
                continue
            if change[0] == "create" and change[-1]:
                self.ctx.opens.ensure_held(reply["ino"], session)
            results.append([0, reply])
        return {"results": results}

    def _ahead(self, session: int, change: tuple):
        """The mutation of one changes_ahead item."""
        kind, parent, name, *fields = change

        def new_inode(tx: Tx) -> dict:
            mode, uid, gid, ino, now, *hold = fields
            granted = tx.inode_grant(session)
            if granted is None or not granted[0] <= ino < granted[1]:
                raise DfsError(errno.EINVAL, f"inode {ino} was not granted to session "
                                             f"{session}")
            kind_bits = stat.S_IFDIR if kind == "mkdir" else stat.S_IFREG
            inode = self.ns.create(tx, now, parent, name, kind_bits | (mode & 0o7777), uid,
                                   gid, ino=ino)
            if hold and hold[0]:
                self.ctx.opens.hold(inode.ino, session)
            return self._with_dirs(tx, self.ns.attr(tx, inode))

        def unlink(tx: Tx) -> dict:
            return self._with_dirs(tx, self.ns.unlink(tx, fields[0], parent, name))

        def rename(tx: Tx) -> dict:
            newname, now = fields
            return self._with_dirs(tx, self.ns.rename(tx, now, parent, name, parent, newname,
                                                      RENAME_NOREPLACE))

        return {"create": new_inode, "mkdir": new_inode, "unlink": unlink,
                "rename": rename}[kind]

    async def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
                    token: bytes | None) -> dict:
        return await self._write(lambda tx: self._with_dirs(tx, self.ns.attr(
            tx, self.ns.mkdir(tx, time.time_ns(), parent, name, mode, uid, gid))), token)

    async def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int,
                      token: bytes | None) -> dict:
        return await self._write(lambda tx: self._with_dirs(tx, self.ns.attr(
            tx, self.ns.symlink(tx, time.time_ns(), parent, name, target, uid, gid))), token)

    async def link(self, ino: int, parent: int, name: bytes, token: bytes | None) -> dict:
        return await self._write(lambda tx: self._with_dirs(
            tx, self.ns.link(tx, time.time_ns(), ino, parent, name)), token)

    async def unlink(self, parent: int, name: bytes, trash: bool | None,
                     token: bytes | None) -> dict:
        return await self._write(lambda tx: self._with_dirs(
            tx, self.ns.unlink(tx, time.time_ns(), parent, name, trash is not False)), token)

    async def rmdir(self, parent: int, name: bytes, token: bytes | None) -> dict:
        return await self._write(lambda tx: self._with_dirs(
            tx, self.ns.rmdir(tx, time.time_ns(), parent, name)), token)

    async def rename(self, parent: int, name: bytes, newparent: int, newname: bytes,
                     flags: int, token: bytes | None) -> dict:
        return await self._write(lambda tx: self._with_dirs(tx, self.ns.rename(
            tx, time.time_ns(), parent, name, newparent, newname, flags)), token)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int) -> dict:
        return await self._write(
            lambda tx: self.ns.setxattr(tx, time.time_ns(), ino, name, value, flags))

    async def removexattr(self, ino: int, name: bytes) -> dict:
        return await self._write(lambda tx: self.ns.removexattr(tx, time.time_ns(), ino, name))

    # --- open files -------------------------------------------------------------------
    async def open(self, ino: int, session: int, token: bytes | None,
                   count: int | None, quiet: bool | None) -> dict:
        self.ctx.sessions.check(session)
        if count is not None and count < 1:
            raise DfsError(errno.EINVAL, f"open: count must be positive, got {count}")
        opens = self.ctx.opens
        opens.hold(ino, session, count)
        if quiet:
            opens.set_quiet(ino, session, True)
        # An unlink that decided before our hold that nobody holds the inode
        # may still be committing: once it has, the read below sees the result.
        await self.ctx.store.batches_started_done()
        try:
            attr = self._read(lambda tx: self.ns.attr(tx, tx.inode(ino)))
        except DfsError:
            opens.drop(ino, session)
            raise
        if opens.unkept(ino, session):
            # An orphan opened again (by handle) or re-announced: record the keeper.
            await self._write(lambda tx: self._add_keeper(tx, ino, session))
        attr["changing"] = opens.changing(ino, session)
        return attr

    def _add_keeper(self, tx: Tx, ino: int, sid: int) -> None:
        keepers = tx.orphan_keepers(ino)
        inode = tx.get_inode(ino)
        if keepers is not None and inode is not None:
            self.ns.collect(tx, inode, keepers | {sid})

    async def release(self, ino: int, session: int) -> dict:
        if self.ctx.opens.release(ino, session) > 0:
            return {}
        self.ctx.reservations.drop(session, ino)
        if self.ctx.opens.keeps(ino, session):
            await self._write(lambda tx: self._drop_keeper(tx, [ino], session))
        return {}

    # --- space ---------------------------------------------------------------------------
    async def statfs(self, ino: int) -> dict:
        def look(tx: Tx):
            inode = tx.inode(ino)
            chain = quotas.chain(tx, ino if inode.is_dir else inode.parent)
            return (tx.quota(chain[0]) if chain else None), inode.replicas

        quota, factor = self._read(look)
        replicas = self.ctx.settings.wanted(factor)
        live = self.ctx.registry.usable()
        total = sum(s.capacity for s in live) // replicas
        free = sum(s.free for s in live) // replicas
        files, ffree = MANY_FILES, MANY_FILES
        if quota is not None and quota.bytes_limit:
            total = quota.bytes_limit
            free = max(0, quota.bytes_limit - quota.bytes_used)
        if quota is not None and quota.inodes_limit:
            files = quota.inodes_limit
            ffree = max(0, quota.inodes_limit - quota.inodes_used)
        return {"bsize": STATFS_BSIZE, "blocks": total // STATFS_BSIZE,
                "bfree": free // STATFS_BSIZE, "bavail": free // STATFS_BSIZE,
                "files": files, "ffree": ffree, "namemax": NAME_MAX}

    async def fence(self, ino: int, token: bytes | None) -> dict:
        fences = self.ctx.fences
        left = self.ctx.leases.grace_until - time.time()
        if ino in fences.restored and left > 0:
            raise DfsError(errno.EAGAIN, f"fence: sessions from before the metaserver's restart "
                                         f"are bound to directory {ino} and may hold write "
                                         f"leases for {left:.0f} s more; try again then")
        return await self._advance(ino, None, token)

    async def _advance(self, ino: int, adopted: int | None, token: bytes | None = None) -> dict:
        """Move `ino`'s epoch on (to `adopted`: one lost in a restore, which a
        mount presents), then fence out the sessions bound to older ones."""
        fences = self.ctx.fences

        def move(tx: Tx) -> dict:
            tx.directory(ino)
            current = tx.epoch(ino)
            epoch = fences.next_epoch(current) if adopted is None else max(adopted, current)
            tx.put_epoch(ino, epoch)
            return {"epoch": epoch}

        async with self.fencing.hold(ino):
            reply = await self._write(move, token)
            fences.move(ino, reply["epoch"])
            while fences.busy(ino):
                await trio.sleep(POLL)
            revoked = fences.leased_chunks(ino)
            await self.data.revoke_all(revoked)
        log.info("attachment epoch moved", ino=ino, epoch=reply["epoch"], revoked=revoked,
                 adopted=adopted is not None)
        return reply

    async def snapshot(self, ino: int, parent: int, name: bytes, token: bytes | None) -> dict:
        async with self.data.gate.closed():
            # One point in time: nobody writes on into a chunk the copy will share.
            # A tree scan, as `status`'s: in a thread, so reads go on meanwhile.
            chunks = await self.ctx.store.read_in_thread(lambda tx: snapshots.chunks_in(tx, ino))
            leased = [chunk_id for chunk_id in chunks
                      if self.ctx.leases.active(chunk_id) is not None]
            await self.data.revoke_all(leased)

            def copy(tx: Tx) -> dict:
                root, nbytes, ninodes = snapshots.copy_tree(tx, self.ns, time.time_ns(), ino,
                                                            parent, name)
                return {**self.ns.attr(tx, root), "bytes": nbytes, "inodes": ninodes}

            attr = await self._write(copy, token)
        log.info("snapshot taken", ino=ino, parent=parent, name=name.decode(errors="replace"),
                 copy=attr["ino"], revoked=len(leased))
        return attr

    async def quota_set(self, ino: int, bytes: int, inodes: int) -> dict:
        if bytes < 0 or inodes < 0:
            raise DfsError(errno.EINVAL, "quota limits must not be negative (0 = unlimited)")

        def set_quota(tx: Tx) -> dict:
            tx.directory(ino)
            quota = tx.quota(ino)
            if quota is None:
                used_bytes, used_inodes = quotas.subtree_usage(tx, ino)
                quota = Quota(bytes, inodes, used_bytes, used_inodes)
            quota.bytes_limit, quota.inodes_limit = bytes, inodes
            tx.put_quota(ino, quota)
            return self._quota_info(tx, ino, quota)

        info = await self._write(set_quota)
        log.info("quota set", ino=ino, bytes=bytes, inodes=inodes)
        return info

    async def quota_get(self, ino: int) -> dict:
        def get(tx: Tx) -> dict:
            tx.inode(ino)
            quota = tx.quota(ino)
            if quota is None:
                raise DfsError(errno.ENODATA, f"directory {ino} has no quota")
            return self._quota_info(tx, ino, quota)

        return self._read(get)

    async def quota_list(self) -> dict:
        return self._read(lambda tx: {"quotas": [self._quota_info(tx, ino, quota)
                                                 for ino, quota in tx.all_quotas()]})

    def _factor_info(self, inode: Inode) -> dict:
        return {"replicas": inode.replicas,
                "effective": self.ctx.settings.wanted(inode.replicas)}

    async def replicas_set(self, ino: int, replicas: int) -> dict:
        factors.check(replicas)
        inode = await self._write(lambda tx: factors.set_factor(tx, ino, replicas))
        log.info("replication factor set", ino=ino, replicas=replicas,
                 kind="directory" if inode.is_dir else "file")
        return self._factor_info(inode)

    async def replicas_get(self, ino: int) -> dict:
        return self._factor_info(self._read(lambda tx: tx.inode(ino)))

    @staticmethod
    def _quota_info(tx: Tx, ino: int, quota: Quota) -> dict:
        return QuotaInfo(ino, quota.bytes_limit, quota.inodes_limit, quota.bytes_used,
                         quota.inodes_used, quotas.path_of(tx, ino)).to_wire()

    async def status(self) -> dict:
        def count(tx: Tx) -> dict:
            files = directories = nbytes = 0
            for inode in tx.all_inodes():
                if inode.is_dir:
                    directories += 1
                else:
                    files += 1
                    nbytes += quotas.usage(inode)
            chunks = under = 0
            per_server: dict[int, int] = {}
            for _, chunk in tx.all_chunks():
                chunks += 1
                wanted = self.ctx.settings.wanted(chunk.replicas)
                if self.cluster.live_count(chunk.locations) < wanted:
                    under += 1
                for csid in chunk.locations:
                    per_server[csid] = per_server.get(csid, 0) + 1
            return {"files": files, "directories": directories, "bytes": nbytes,
                    "chunks": chunks, "under_replicated": under, "per_server": per_server}

        counts = await self.ctx.store.read_in_thread(count)
        counts["chunkservers"] = self.cluster.servers_status(counts.pop("per_server"))
        counts["sessions"] = len(self.ctx.sessions.deadlines)
        counts["orphans"] = len(self.ctx.opens.orphans)
        counts["commits"] = self.ctx.store.batches
        counts.update(self.cluster.health())
        backups = self.backups.list()
        counts["backup"] = backups[-1].to_wire() if backups else None
        counts["backup_error"] = self.backups.last_error
        restored_at = self._read(lambda tx: tx.counter(restore.RESTORED_AT))
        counts["restore"] = ({"at": restored_at, "hold_until": self.cluster.hold_until}
                             if restored_at else None)
        counts["metaloggers"] = self.changelog.status()
        counts["cluster"] = self._read(lambda tx: tx.counter(CLUSTER_ID))
        return counts

    # --- backups ------------------------------------------------------------------
    async def backup_take(self) -> dict:
        return (await trio.to_thread.run_sync(self.backups.take)).to_wire()

    async def backup_list(self) -> dict:
        return {"backups": [b.to_wire() for b in self.backups.list()]}

    async def backup_read(self, name: str, offset: int, length: int) -> dict:
        return transit.with_crc(await trio.to_thread.run_sync(self.backups.read, name, offset,
                                                              length))

    # --- metaloggers ----------------------------------------------------------------
    async def log_read(self, follower: str, history: int, after: int, part: int,
                       wait: float) -> dict:
        return await self.changelog.read(follower, history, after, part, wait)

    async def log_copy(self, follower: str) -> dict:
        self.changelog.heard(follower)
        return (await self.changelog.copy()).to_wire()

    async def log_copy_read(self, follower: str, name: str, offset: int, length: int) -> dict:
        self.changelog.heard(follower)
        return transit.with_crc(await trio.to_thread.run_sync(self.changelog.read_copy, name,
                                                              offset, length))


def _named_folders(args: dict, by_ino: bool = True) -> set:
    """The folders a request names: parent, newparent, those of changes_ahead's
    items and (`by_ino`) its inode, which may be a folder."""
    named = {args.get("parent"), args.get("newparent"), args.get("ino") if by_ino else None}
    named.update(item[1] for item in args.get("items") or ()
                 if isinstance(item, list) and len(item) > 1 and type(item[1]) is int)
    named.discard(None)
    return named


def _ahead_item(item) -> tuple:
    """One changes_ahead item, checked (see dfs/ops.py)."""
    shape = (AHEAD_ITEMS.get(item[0]) if isinstance(item, list) and item
             and type(item[0]) is str else None)
    if shape is None or len(item) != len(shape) + 1 or not all(
            type(value) is kind for value, kind in zip(item[1:], shape)):
        raise DfsError(errno.EINVAL, "changes_ahead: an item is one of " + "; ".join(
            f"[{kind!r}, {', '.join(t.__name__ for t in shape)}]"
            for kind, shape in AHEAD_ITEMS.items()))
    return tuple(item)


def _may_create_ahead(tx: Tx, folder: int) -> bool:
    """Whether files may be made in `folder` before the metaserver hears of
    them: not where a quota counts inodes (the count would be learned late)."""
    return all(not tx.quota(ino).inodes_limit for ino in quotas.chain(tx, folder))
