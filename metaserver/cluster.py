"""Chunk servers talking to the metaserver: registration, heartbeats, bad
replicas, and re-replication of chunks that have fewer live replicas than
their file's replication factor (the cluster's R when it has none).
"""

import errno
import time
from collections import Counter, deque
from dataclasses import dataclass

import trio

from dfs import logs
from dfs.errors import DfsError
from dfs.ops import check_zone
from dfs.rpc import parse_addr, peer_host

from . import chunktable
from .chunkpool import ChunkPool
from .context import Context
from .records import ChunkServerRecord
from .registry import ServerState
from .replicas import Copy, Replicas
from .restore import HOLD_UNTIL, RESTORED_AT, SETTLING
from .store import CLUSTER_ID, LOG_HISTORY, LOG_SEQ, Tx

log = logs.get_logger("metaserver")

# Garbage handed to one server per heartbeat.
GC_PER_HEARTBEAT = 1000
# Copies one server is asked to make at a time: re-replication is throttled
# so that client I/O keeps going (each chunk server also runs at most two).
REPLICATIONS_PER_SERVER = 4
# A copy not confirmed within this long is abandoned and planned again.
REPLICATION_DEADLINE = 30.0
REPLICATION_INTERVAL = 1.0
# Chunks whose replicas no longer needed are deleted per round (see _trim).
TRIMS_PER_ROUND = 256
# Chunks whose copies share a zone that one round tries to copy to another.
SPREADS_PER_ROUND = 256
# Balancing starts when the fullest server's disk is this much fuller (as a
# share of its size) than the emptiest's: chunks are copied from the one to
# the other, and _trim deletes the replica on the fullest.
BALANCE_SPREAD = 0.05
# Bad-replica reports kept for `status`.
RECENT_BAD = 20


@dataclass
class BadReport:
    chunk: int
    csid: int
    version: int
    at: float


def _position(tx: Tx) -> list[int]:
    """Where the database is: [history, seq, now] (see cs_register)."""
    return [tx.counter(LOG_HISTORY), tx.counter(LOG_SEQ), int(time.time())]


def _check_position(tx: Tx, theirs: list, addr: str) -> None:
    """EREMCHG if this database is older than the one a chunk server last
    heard from: the same history at an older commit, or another history not
    restored since that moment (a disk image put back). Reconciling would
    delete every chunk written since; dfs-metaserver-restore keeps them."""
    if len(theirs) != 3 or not all(type(n) is int for n in theirs):
        raise DfsError(errno.EINVAL, "cs_register: position must be [history, seq, time]")
    history, seq, at = theirs
    our_history, our_seq = tx.counter(LOG_HISTORY), tx.counter(LOG_SEQ)
    # Times are whole seconds: a restore in the second of the last contact
    # counts as after it (a restore needs the metaserver stopped meanwhile).
    if (history == our_history and seq > our_seq) or (history != our_history
                                                      and tx.counter(RESTORED_AT) < at):
        raise DfsError(errno.EREMCHG, (
            f"chunk server {addr} last heard from this cluster's database at commit {seq} "
            f"(history {history:x}), and this one is at commit {our_seq} (history "
            f"{our_history:x}) without a restore since: it was put back to an older state "
            "(a disk image or snapshot?). Stop the metaserver and restore that database with "
            "dfs-metaserver-restore, which keeps the chunks it does not know"))


class Cluster:
    def __init__(self, ctx: Context, replicas: Replicas, pool: ChunkPool):
        self.ctx = ctx
        self.replicas = replicas
        self.pool = pool
        self.copies = replicas.copies
        self.bad_total = 0
        self.recent_bad: deque[BadReport] = deque(maxlen=RECENT_BAD)
        # The servers that registered with this process: the others are asked
        # to, so that what each holds is matched against the table as it is
        # now, which a restore from a backup may have changed.
        self.registered: set[int] = set()
        # The garbage handed to each server in its last heartbeat.
        self.handed: dict[int, list[int]] = {}
        # Until then (unix seconds) chunks no file refers to are kept, not
        # deleted: the metadata was restored from a backup (restore.py).
        self.hold_until = 0
        # Set once the replicas the table lists can be handed out. After a
        # restore that is when every server known has registered (taking in
        # the newest versions), or the heartbeat timeout has passed; until
        # then an older replica could be read, or moved to a new version past
        # a newer one that a server yet to register holds.
        self.settled = trio.Event()
        self.awaited: set[int] = set()
        # As the last re-replication round found them: chunks short of copies
        # (those being copied included), and chunks with no live replica.
        self.under_replicated = 0
        self.unavailable = 0
        # Chunks with their copies in fewer zones than they could be in.
        self.misplaced = 0

    def load(self) -> None:
        known = self.ctx.store.read(lambda tx: list(tx.all_chunkservers()))
        for csid, record in known:
            self.ctx.registry.known(csid, record.addr, record.draining, record.zone)
        self.hold_until = self.ctx.store.read(lambda tx: tx.counter(HOLD_UNTIL))
        if self.ctx.store.read(lambda tx: tx.counter(SETTLING)):
            self.awaited = {csid for csid, _ in known}
        else:
            self.settled.set()

    async def settle(self) -> None:
        """After a restore, stop waiting for servers that do not register
        within the heartbeat timeout (they count as dead)."""
        if self.settled.is_set():
            return
        with trio.move_on_after(self.ctx.settings.heartbeat_timeout):
            await self.settled.wait()
        await self._settle()

    async def _settle(self) -> None:
        if self.settled.is_set():
            return
        await self.ctx.store.write(lambda tx: tx.put_counter(SETTLING, 0))
        self.settled.set()
        log.info("chunk servers registered with the restored metadata",
                 missing=sorted(self.awaited))

    def holding(self) -> bool:
        return time.time() < self.hold_until

    # --- handlers -------------------------------------------------------------
    async def cs_register(self, csid, addr: str, capacity: int, used: int,
                          chunks: list, cluster: int | None, position: list | None,
                          zone: str | None = None) -> dict:
        try:
            parse_addr(addr)
        except ValueError as exc:
            raise DfsError(errno.EINVAL, str(exc)) from None
        if zone is not None:
            check_zone(zone)
        reported = {}
        for item in chunks:
            if (not isinstance(item, list) or len(item) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
                raise DfsError(errno.EINVAL, "cs_register: chunks must be [[chunk, version], ...]")
            reported[item[0]] = item[1]

        def register(tx: Tx):
            ours = tx.counter(CLUSTER_ID)
            if cluster is not None and cluster != ours:
                raise DfsError(errno.EREMCHG, (
                    f"chunk server {addr} belongs to cluster {cluster:x}, and this "
                    f"metaserver's database is cluster {ours:x}'s: it may have started on "
                    "an empty or another disk. Restore the metaserver's database "
                    "(dfs-metaserver-restore); to join this cluster and delete what the "
                    "server holds, remove its data folder's cluster file"))
            if position is not None:
                _check_position(tx, position, addr)
            ours_now = _position(tx)
            record = tx.chunkserver(csid) if csid is not None else None
            sid = csid if record is not None else tx.next_id("chunkserver")
            draining = record is not None and record.draining
            tx.put_chunkserver(sid, ChunkServerRecord(addr, draining, zone or ""))
            delete = self._reconcile(tx, sid, reported, self.holding(), creating)
            return sid, delete, ours, ours_now, draining

        creating = frozenset(self.replicas.creating)

        try:
            sid, delete, ours, now_at, draining = await self.ctx.store.write(register)
        except DfsError as exc:
            if exc.errno == errno.EREMCHG:
                log.error("chunk server refused: the database is not one it can trust",
                          addr=addr, csid=csid, error=exc.message, chunks=len(reported))
            raise
        # Garbage among them stays garbage until the next heartbeat, as
        # cs_heartbeat explains.
        self.handed[sid] = delete
        await self.pool.registered(sid, set(reported))
        self.registered.add(sid)
        self.awaited.discard(sid)
        if not self.awaited:
            await self._settle()
        self.ctx.registry.known(sid, addr, draining, zone, peer_host())
        self.ctx.registry.heard(sid, addr, capacity, used)
        log.info("chunk server registered", csid=sid, addr=addr,
                 zone=self.ctx.registry.servers[sid].zone, chunks=len(reported),
                 stale=len(delete), draining=draining)
        return {"csid": sid, "delete": delete, "cluster": ours, "position": now_at}

    @staticmethod
    def _reconcile(tx: Tx, csid: int, reported: dict[int, int], hold: bool,
                   creating: frozenset[int]) -> list[int]:
        """Match what a server holds with the chunk table; return what it must
        delete (with `hold`, not the chunks the table does not know; never
        those in `creating`, not in the table yet)."""
        delete = []
        changed = {}
        for chunk_id, version in reported.items():
            chunk = tx.chunk(chunk_id)
            doomed = tx.has_garbage(csid, chunk_id)
            if chunk is None and (hold or chunk_id in creating) and not doomed:
                continue
            if chunk is None or version < chunk.version or doomed:
                delete.append(chunk_id)
                continue
            if version > chunk.version:
                # A version bump reached this replica but was never recorded:
                # it is the newest copy, the others are stale.
                for other in list(chunk.locations):
                    if other != csid:
                        chunktable.drop_location(tx, chunk_id, chunk, other)
                chunk.version = version
            if csid not in chunk.locations:
                chunk.locations.append(csid)
            changed[chunk_id] = chunk
        for chunk_id, chunk in list(tx.all_chunks()):
            if csid in chunk.locations and chunk_id not in reported:
                chunk.locations.remove(csid)
                changed[chunk_id] = chunk
        for chunk_id, chunk in changed.items():
            tx.put_chunk(chunk_id, chunk)
        return delete

    async def cs_heartbeat(self, csid: int, capacity: int, used: int) -> dict:
        record = self.ctx.store.read(lambda tx: tx.chunkserver(csid))
        if record is None or csid not in self.registered:
            raise DfsError(errno.ENOENT, f"unknown chunk server {csid}: register first")
        self.ctx.registry.heard(csid, record.addr, capacity, used)
        # A server deletes what a heartbeat hands it before it sends the next,
        # so only then is that no longer garbage: until then fsck does not take
        # a replica being deleted for an orphan, and a server that stopped
        # before deleting is handed it again.
        deleted = self.handed.pop(csid, [])
        if deleted:
            await self.ctx.store.write(
                lambda tx: [tx.clear_garbage(csid, chunk_id) for chunk_id in deleted])
        delete = self.handed[csid] = self.ctx.store.read(
            lambda tx: tx.garbage_of(csid, GC_PER_HEARTBEAT))
        return {"delete": delete, "replicate": self._hand_out(csid),
                "position": self.ctx.store.read(_position)}

    async def cs_bad_chunk(self, csid: int, chunk: int, version: int) -> dict:
        """Drop a replica that failed its checksum, unless it is the last one
        (its good blocks are still worth more than nothing); re-replication
        then copies a good replica in its place."""
        def drop(tx: Tx) -> bool:
            record = tx.chunk(chunk)
            if record is None or csid not in record.locations or record.version != version:
                return False
            if not any(c != csid for c in record.locations):
                return False
            chunktable.drop_location(tx, chunk, record, csid)
            tx.put_chunk(chunk, record)
            return True

        async with self.replicas.locks.hold(chunk):
            dropped = await self.ctx.store.write(drop)
        self.bad_total += 1
        self.recent_bad.append(BadReport(chunk, csid, version, time.time()))
        log.warning("bad replica reported", chunk=chunk, version=version, csid=csid,
                    dropped=dropped)
        return {}

    # --- status ---------------------------------------------------------------
    def live_count(self, locations: list[int]) -> int:
        return sum(1 for csid in locations if self.ctx.registry.alive(csid))

    def servers_status(self, chunks_per_server: dict[int, int]) -> list[dict]:
        return [{"csid": s.csid, "addr": s.addr, "zone": s.zone,
                 "alive": self.ctx.registry.alive(s.csid),
                 "draining": s.draining, "capacity": s.capacity, "used": s.used,
                 "chunks": chunks_per_server.get(s.csid, 0)}
                for s in sorted(self.ctx.registry.servers.values(), key=lambda s: s.csid)]

    def health(self) -> dict:
        extra = sum(1 for copy in self.copies.values() if copy.extra)
        return {"replicating": len(self.copies) - extra, "balancing": extra,
                "misplaced": self.misplaced, "bad_replicas": self.bad_total,
                "recent_bad": [{"chunk": b.chunk, "csid": b.csid, "version": b.version,
                                "at": b.at} for b in self.recent_bad]}

    # --- re-replication -------------------------------------------------------
    async def replicate(self) -> None:
        """One round: plan copies for under-replicated chunks, confirm finished ones."""
        if not self.settled.is_set():
            return
        await self._plan()
        await self._confirm()

    async def _plan(self) -> None:
        registry, settings = self.ctx.registry, self.ctx.settings

        def under(tx: Tx):
            found, surplus, spread, movable, short, unavailable = [], [], [], [], 0, 0
            misplaced = 0
            # Taken once per round: set operations per chunk, no calls.
            alive = {csid for csid in registry.servers if registry.alive(csid)}
            draining = {csid for csid, s in registry.servers.items() if s.draining}
            staying = alive - draining
            zone_of = {csid: registry.servers[csid].zone for csid in staying}
            zones = Counter(zone_of.values())
            # Only copies on servers that share a zone can share it.
            sharing = {csid for csid, zone in zone_of.items() if zones[zone] > 1}
            fullest, emptiest = balance
            # A copy moved from the fullest server to the emptiest must not
            # leave the chunk in fewer zones: not beside a copy in the
            # emptiest's zone unless another copy stays in the fullest's.
            beside = mates = set()
            if zone_of.get(fullest) != zone_of.get(emptiest):
                beside = {c for c in staying if zone_of[c] == zone_of[emptiest]}
                mates = {c for c in staying if zone_of[c] == zone_of[fullest]} - {fullest}
            for chunk_id, chunk in tx.all_chunks():
                locations = chunk.locations
                live = len(alive.intersection(locations))
                wanted = settings.wanted(chunk.replicas)
                unavailable += not live
                short += 0 < live < wanted
                if not live:
                    continue
                # Replicas on draining servers are not counted: they are to go.
                kept = staying.intersection(locations)
                if (len(zones) > 1 and len(sharing.intersection(kept)) > 1
                        and len({zone_of[c] for c in kept}) < min(wanted, len(zones))):
                    misplaced += 1
                    if (len(spread) < SPREADS_PER_ROUND and len(kept) == wanted
                            and chunk_id not in self.copies):
                        spread.append(chunk_id)
                if chunk_id in self.copies:
                    continue
                if len(kept) < wanted:
                    found.append(chunk_id)
                elif len(kept) > wanted or not draining.isdisjoint(locations):
                    surplus.append(chunk_id)
                elif (fullest in locations and emptiest not in locations
                      and (beside.isdisjoint(locations) or not mates.isdisjoint(locations))
                      and len(movable) < REPLICATIONS_PER_SERVER):
                    movable.append(chunk_id)
            return found, surplus, spread, movable, short, unavailable, misplaced

        balance = self._balance_pair()
        (found, surplus, spread, movable, self.under_replicated, self.unavailable,
         self.misplaced) = await self.ctx.store.read_in_thread(under)
        for chunk_id in surplus[:TRIMS_PER_ROUND]:
            await self._trim(chunk_id)
        # Repairs first, then copies to spread chunks over zones.
        for chunk_id in found + spread:
            load = Counter(c.target for c in self.copies.values())
            if all(load[s.csid] >= REPLICATIONS_PER_SERVER for s in registry.live()):
                return
            async with self.replicas.locks.hold(chunk_id):
                if chunk_id not in self.copies:
                    await self._plan_one(chunk_id, {c for c, n in load.items()
                                                    if n >= REPLICATIONS_PER_SERVER})
        # Balancing waits for every copy in flight, repairs first.
        onto = registry.servers.get(balance[1])
        if self.copies or not movable or onto is None:
            return
        for chunk_id in movable:
            async with self.replicas.locks.hold(chunk_id):
                if chunk_id not in self.copies:
                    await self._plan_one(chunk_id, set(), onto)
        log.info("balancing disks", fullest=balance[0], emptiest=balance[1],
                 copies=len(self.copies))

    def _balance_pair(self) -> tuple[int, int]:
        """(fullest, emptiest) of the servers taking chunks, if their disks'
        fullness is more than BALANCE_SPREAD apart; else (0, 0)."""
        servers = sorted((s for s in self.ctx.registry.usable() if s.capacity),
                         key=lambda s: s.fullness)
        if len(servers) < 2 or servers[-1].fullness - servers[0].fullness <= BALANCE_SPREAD:
            return 0, 0
        return servers[-1].csid, servers[0].csid

    async def _plan_one(self, chunk_id: int, busy: set[int],
                        onto: ServerState | None = None) -> None:
        """Hand a copy of a chunk to a server with room: of a chunk short of
        copies, to one in a zone none of them is in if there is one; of a
        chunk that has its copies but in fewer zones than the cluster has, to
        one in another zone; or with `onto`, to that server (balancing). The
        copy beyond the factor is then deleted by _trim, which keeps one in
        each zone first. A write lease is fenced out first (see replicas.py)."""
        registry, settings = self.ctx.registry, self.ctx.settings
        chunk = self.ctx.store.read(lambda tx: tx.chunk(chunk_id))
        if chunk is None:
            return
        live = [c for c in chunk.locations if registry.alive(c)]
        kept = [c for c in live if not registry.draining(c)]
        short = len(kept) < settings.wanted(chunk.replicas)
        if not live or (onto is not None and short):
            return
        pending_gc = self.ctx.store.read(
            lambda tx: {csid for csid in registry.servers if tx.has_garbage(csid, chunk_id)})
        exclude = set(chunk.locations) | busy | pending_gc
        if onto is not None:
            exclude |= set(registry.servers) - {onto.csid}
        elif not short:
            held = registry.zones(kept)
            usable = registry.zones(s.csid for s in registry.usable())
            if len(kept) > settings.wanted(chunk.replicas) or len(held) >= min(len(kept),
                                                                                len(usable)):
                return
            exclude |= {s.csid for s in registry.servers.values() if s.zone in held}
        if not registry.candidates(settings.chunk_size, exclude):
            return
        version, holders = chunk.version, live
        if self.ctx.leases.active(chunk_id) is not None:
            try:
                version, holders = await self.replicas.move_version(chunk_id, chunk)
            except DfsError as exc:
                log.warning("cannot fence a chunk for replication", chunk=chunk_id,
                            error=str(exc))
                return
        targets = registry.place(1, settings.chunk_size, exclude, kept)
        if targets:
            self.copies[chunk_id] = Copy(chunk_id, version, targets[0].csid,
                                         registry.addr(holders[0]), not short)
            log.info("replication planned", chunk=chunk_id, version=version,
                     target=targets[0].csid, zone=targets[0].zone, source=holders[0],
                     why="short" if short else "balance" if onto else "spread")

    async def _trim(self, chunk_id: int) -> None:
        """Delete the replicas a chunk no longer needs, once it has its
        factor on live servers that stay: those on draining servers, and
        live ones beyond its factor (a server back after its chunks were
        copied again, a factor lowered, a copy made to balance disks or to
        spread zones). One replica in each zone is kept first, then the
        emptiest disks' (Registry.keep).
        Under a write lease the version moves on the replicas kept instead,
        which ends the lease (the writer asks again)."""
        registry, settings = self.ctx.registry, self.ctx.settings
        async with self.replicas.locks.hold(chunk_id):
            chunk = self.ctx.store.read(lambda tx: tx.chunk(chunk_id))
            if chunk is None or chunk_id in self.copies:
                return
            wanted = settings.wanted(chunk.replicas)
            staying = [c for c in chunk.locations
                       if registry.alive(c) and not registry.draining(c)]
            if len(staying) < wanted:
                return
            kept = registry.keep(staying, wanted)
            going = [c for c in chunk.locations
                     if registry.draining(c) or (c in staying and c not in kept)]
            if not going:
                return
            if self.ctx.leases.active(chunk_id) is not None:
                try:
                    await self.replicas.move_version(chunk_id, chunk,
                                                     exclude=frozenset(going))
                except DfsError as exc:
                    log.warning("cannot fence a chunk to delete its extra replicas",
                                chunk=chunk_id, error=str(exc))
                    return
            else:
                def drop(tx: Tx) -> None:
                    now = tx.chunk(chunk_id)
                    for csid in going:
                        chunktable.drop_location(tx, chunk_id, now, csid)
                    tx.put_chunk(chunk_id, now)

                await self.ctx.store.write(drop)
        log.info("extra replicas deleted", chunk=chunk_id, csids=going, kept=kept,
                 wanted=wanted)

    # --- servers leaving ------------------------------------------------------
    async def chunkserver_drain(self, csid: int, drain: bool) -> dict:
        def mark(tx: Tx) -> None:
            record = tx.chunkserver(csid)
            if record is None:
                raise DfsError(errno.ENOENT, f"no chunk server {csid}")
            record.draining = drain
            tx.put_chunkserver(csid, record)

        await self.ctx.store.write(mark)
        self.ctx.registry.servers[csid].draining = drain
        if drain:
            await self.pool.leaving(csid)
        log.info("chunk server draining" if drain else "chunk server no longer draining",
                 csid=csid, addr=self.ctx.registry.addr(csid))
        held = await self.ctx.store.read_in_thread(
            lambda tx: sum(1 for _, chunk in tx.all_chunks() if csid in chunk.locations))
        return next(s for s in self.servers_status({csid: held}) if s["csid"] == csid)

    async def chunkserver_remove(self, csid: int, force: bool) -> dict:
        """Forget a stopped server: its record, its replicas in the chunk
        table and the garbage it was to delete."""
        registry = self.ctx.registry
        if csid not in registry.servers:
            raise DfsError(errno.ENOENT, f"no chunk server {csid}")
        if registry.alive(csid):
            raise DfsError(errno.EBUSY, (
                f"chunk server {csid} ({registry.addr(csid)}) is alive: stop it first (drain "
                "it before, so that no chunk loses a copy)"))

        def forget(tx: Tx) -> dict:
            held = [(chunk_id, chunk) for chunk_id, chunk in tx.all_chunks()
                    if csid in chunk.locations]
            lost = [chunk_id for chunk_id, chunk in held if chunk.locations == [csid]]
            if lost and not force:
                raise DfsError(errno.EBUSY, (
                    f"chunk server {csid} holds the only copy of {len(lost)} chunk(s) (first: "
                    f"{lost[:5]}); start it again and drain it, or remove it with --force "
                    "and lose them"))
            for chunk_id, chunk in held:
                chunk.locations.remove(csid)
                tx.put_chunk(chunk_id, chunk)
            for chunk_id in tx.garbage_of(csid):
                tx.clear_garbage(csid, chunk_id)
            tx.delete_chunkserver(csid)
            return {"dropped": len(held), "lost": len(lost)}

        for copy in [c for c in self.copies.values() if c.target == csid]:
            await self.replicas.abandon(copy, "its target is being removed")
        await self.pool.leaving(csid)
        # Each change to a chunk's record reads it inside its own transaction,
        # so none can put this server back once the transaction is done.
        removed = await self.ctx.store.write(forget)
        registry.forget(csid)
        self.registered.discard(csid)
        self.handed.pop(csid, None)
        self.awaited.discard(csid)
        log.warning("chunk server removed", csid=csid, replicas_forgotten=removed["dropped"],
                    chunks_lost=removed["lost"])
        return removed

    def _hand_out(self, csid: int) -> list[list]:
        now = time.monotonic()
        tasks = []
        for copy in self.copies.values():
            if copy.target == csid and not copy.handed_at:
                copy.handed_at = now
                tasks.append([copy.chunk, copy.version, copy.source])
        return tasks

    async def _confirm(self) -> None:
        now = time.monotonic()
        for copy in list(self.copies.values()):
            if copy.done.is_set():
                continue
            if not copy.handed_at:
                if not self.ctx.registry.alive(copy.target):
                    await self.replicas.abandon(copy, "target is dead")
                continue
            try:
                client = self.ctx.chunkservers.get(self.ctx.registry.addr(copy.target))
                info = await client.call("chunk_info", timeout=5.0, chunk=copy.chunk)
            except DfsError:
                info = {}
            if info.get("version") == copy.version:
                async with self.replicas.locks.hold(copy.chunk):
                    await self.ctx.store.write(lambda tx, c=copy: self._record_copy(tx, c))
                    self.replicas.finished(copy)
                log.info("chunk replicated", chunk=copy.chunk, version=copy.version,
                         csid=copy.target)
            elif now - copy.handed_at > REPLICATION_DEADLINE:
                await self.replicas.abandon(copy, "not confirmed in time")

    @staticmethod
    def _record_copy(tx: Tx, copy: Copy) -> None:
        chunk = tx.chunk(copy.chunk)
        if chunk is None or chunk.version != copy.version:
            tx.add_garbage(copy.target, copy.chunk)
            return
        if copy.target not in chunk.locations:
            chunk.locations.append(copy.target)
            tx.put_chunk(copy.chunk, chunk)
