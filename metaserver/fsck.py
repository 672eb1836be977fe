"""fsck on the metaserver's side: the chunk table checked against what the
chunk servers hold, a page of chunks at a time, repairing on request.

Repair never drops the last good replica of a chunk: it drops missing, stale
and corrupt replicas when a good one exists (re-replication then restores
the file's factor from it) and deletes replicas nobody records.
Under-replicated chunks need no repair here, re-replication handles them.
"""

import errno
import time
from itertools import islice

from dfs import logs
from dfs.errors import DfsError

from . import chunktable
from .context import Context
from .replicas import Replicas
from .restore import HOLD_UNTIL
from .store import Tx

log = logs.get_logger("metaserver")

PAGE_MAX = 1000
CHECK_TIMEOUT = 60.0
# Problems a repair fixes by dropping the replica.
DROPPABLE = ("missing", "stale", "corrupt")


def _problem(chunk: int, kind: str, csid: int, detail: str) -> dict:
    return {"chunk": chunk, "kind": kind, "csid": csid, "detail": detail, "repaired": False}


class Fsck:
    def __init__(self, ctx: Context, replicas: Replicas):
        self.ctx = ctx
        self.replicas = replicas

    async def fsck_chunks(self, after: int, limit: int, verify: bool, repair: bool) -> dict:
        if not 0 < limit <= PAGE_MAX:
            raise DfsError(errno.EINVAL, f"fsck_chunks: limit must be 1..{PAGE_MAX}")
        page = self.ctx.store.read(lambda tx: [c for c, _ in islice(tx.all_chunks(after), limit)])
        problems = []
        for chunk_id in page:
            async with self.replicas.locks.hold(chunk_id):
                problems += await self._check(chunk_id, verify, repair)
        return {"checked": len(page), "next": page[-1] if len(page) == limit else 0,
                "problems": problems}

    async def _replica_state(self, chunk_id: int, version: int, csid: int, verify: bool):
        """(kind, detail) of one replica's problem, or None if it is good."""
        registry = self.ctx.registry
        if not registry.alive(csid):
            return "dead", f"chunk server {csid} is not heard from"
        client = self.ctx.chunkservers.get(registry.addr(csid))
        try:
            info = await client.call("verify" if verify else "chunk_info",
                                     timeout=CHECK_TIMEOUT, chunk=chunk_id)
        except DfsError as exc:
            if exc.errno == errno.ENOENT:
                return "missing", "the chunk server has no replica"
            if exc.errno == errno.EIO:
                return "corrupt", exc.message
            return "dead", f"chunk server {csid} did not answer: {exc.message}"
        if info.get("version") != version:
            return "stale", f"replica at version {info.get('version')}, table says {version}"
        return None

    async def _check(self, chunk_id: int, verify: bool, repair: bool) -> list[dict]:
        chunk = self.ctx.store.read(lambda tx: tx.chunk(chunk_id))
        if chunk is None:
            return []
        problems, good = [], []
        for csid in chunk.locations:
            state = await self._replica_state(chunk_id, chunk.version, csid, verify)
            if state is None:
                good.append(csid)
            else:
                problems.append(_problem(chunk_id, state[0], csid, state[1]))
        doomed = [p for p in problems if p["kind"] in DROPPABLE]
        if repair and good and doomed:
            def drop(tx: Tx) -> None:
                record = tx.chunk(chunk_id)
                for p in doomed:
                    chunktable.drop_location(tx, chunk_id, record, p["csid"])
                    p["repaired"] = True
                tx.put_chunk(chunk_id, record)

            await self.ctx.store.write(drop)
            log.warning("fsck dropped bad replicas", chunk=chunk_id,
                        csids=[p["csid"] for p in doomed])
        wanted = self.ctx.settings.wanted(chunk.replicas)
        if not good:
            problems.append(_problem(chunk_id, "lost", 0, "no good replica is reachable"))
        elif len(good) < wanted:
            problems.append(_problem(chunk_id, "under_replicated", 0,
                                     f"{len(good)} of {wanted} good replicas "
                                     f"(re-replication restores the rest)"))
        return problems

    async def fsck_servers(self, repair: bool) -> dict:
        problems = []
        for server in self.ctx.registry.live():
            try:
                reply = await self.ctx.chunkservers.get(server.addr).call(
                    "list_chunks", timeout=CHECK_TIMEOUT)
            except DfsError as exc:
                problems.append(_problem(0, "dead", server.csid,
                                         f"cannot list replicas: {exc.message}"))
                continue
            held = [item for item in reply.get("chunks", ())
                    if isinstance(item, list) and len(item) == 2]
            found, kept = self.ctx.store.read(
                lambda tx, s=server.csid: self._unrecorded(tx, s, held))
            problems += kept
            if repair and found:
                def doom(tx: Tx, csid=server.csid) -> None:
                    for p in found:
                        tx.add_garbage(csid, p["chunk"])
                        p["repaired"] = True

                await self.ctx.store.write(doom)
                log.warning("fsck scheduled unrecorded replicas for deletion", csid=server.csid,
                            chunks=[p["chunk"] for p in found])
            problems += found
        return {"problems": problems}

    def _unrecorded(self, tx: Tx, csid: int, held: list) -> tuple[list[dict], list[dict]]:
        """The replicas a server holds that the table does not count: those a
        repair deletes, and orphans kept after a restore from a backup."""
        found, kept = [], []
        hold_until = tx.counter(HOLD_UNTIL)
        for chunk_id, version in held:
            busy = chunk_id in self.replicas.creating or chunk_id in self.replicas.copies
            if busy or tx.has_garbage(csid, chunk_id):
                continue
            record = tx.chunk(chunk_id)
            if record is None and time.time() < hold_until:
                when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(hold_until))
                kept.append(_problem(chunk_id, "orphan", csid,
                                     f"no file refers to this chunk; kept until {when}, as "
                                     "the metadata was restored from a backup"))
            elif record is None:
                found.append(_problem(chunk_id, "orphan", csid, "no file refers to this chunk"))
            elif version < record.version:
                found.append(_problem(chunk_id, "stale", csid,
                                      f"replica at version {version}, table says "
                                      f"{record.version}"))
            elif csid not in record.locations:
                found.append(_problem(chunk_id, "unlisted", csid,
                                      "replica not recorded as a location"))
        return found, kept
