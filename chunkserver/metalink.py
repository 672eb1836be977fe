"""The chunk server's side of the metaserver link: registration, heartbeats,
the work they bring back (replicas to delete or to copy), and reports of bad
replicas.

Any failure to reach the metaserver makes the next contact a registration: a
metaserver that restarted, or that dropped this server meanwhile, needs the
full list of replicas again. Clients are served all along; only the link waits.

The server keeps its id (`csid`), its cluster's (`cluster`) and where the
cluster's database last was (`position`: history, commit, the metaserver's
time; from a registration, then at most every POSITION_EVERY seconds) in its
data folder.
A registration names them, so that a metaserver started on an empty or
another disk, or on an older image of its own, refuses the server instead of
having it delete every chunk that database does not know.
"""

import errno
import time
from pathlib import Path

import trio

from dfs import logs, ops
from dfs.durable import replace_file
from dfs.errors import DfsError
from dfs.rpc import Client

from .service import ChunkService

log = logs.get_logger("chunkserver")

CSID_FILE = "csid"
CLUSTER_FILE = "cluster"
POSITION_FILE = "position"
POSITION_EVERY = 60.0
REPLICATIONS_AT_ONCE = 2
# Kept short so that a restarted metaserver hears from every server soon.
MAX_BACKOFF = 2.0
CALL_TIMEOUT = 30.0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _chunk_ids(items) -> list[int]:
    return [c for c in items or () if _is_int(c)]


def _copy_tasks(items) -> list[tuple[int, int, str]]:
    """The well-formed [chunk, version, "host:port"] entries of a heartbeat reply."""
    return [tuple(t) for t in items or ()
            if isinstance(t, list) and len(t) == 3 and _is_int(t[0]) and _is_int(t[1])
            and isinstance(t[2], str)]


def _load_id(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("ignoring an unreadable id file", path=str(path))
        return None


def _load_position(path: Path) -> list[int] | None:
    try:
        position = [int(n) for n in path.read_text().split()]
    except FileNotFoundError:
        return None
    except ValueError:
        position = []
    if len(position) != 3:
        log.warning("ignoring an unreadable position file", path=str(path))
        return None
    return position


def _save_id(path: Path, value: int) -> None:
    _save_text(path, str(value))


def _save_text(path: Path, text: str) -> None:
    replace_file(path, f"{text}\n".encode())


class MetaLink:
    def __init__(self, service: ChunkService, meta: str, secret: bytes, advertise: str,
                 data_dir: Path, interval: float, zone: str | None = None):
        self.service = service
        self.meta = meta
        self.advertise = advertise
        self.zone = zone
        self.interval = interval
        self.client = Client(meta, secret, ops.META_CS)
        self.csid_path = Path(data_dir) / CSID_FILE
        self.csid = _load_id(self.csid_path)
        self.cluster_path = Path(data_dir) / CLUSTER_FILE
        self.cluster = _load_id(self.cluster_path)
        self.position_path = Path(data_dir) / POSITION_FILE
        self.position = _load_position(self.position_path)
        self._position_kept = float("-inf")
        self._replicating: set[int] = set()
        self._limiter = trio.CapacityLimiter(REPLICATIONS_AT_ONCE)
        self._known = trio.Event()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_bad_replicas)
                await self._heartbeats(nursery)
        finally:
            await self.client.aclose()

    async def _usage(self) -> dict:
        capacity, used = await trio.to_thread.run_sync(self.service.store.usage)
        return {"capacity": capacity, "used": used}

    async def _heartbeats(self, nursery: trio.Nursery) -> None:
        registered = False
        delay = self.interval
        while True:
            try:
                if registered:
                    reply = await self.client.call("cs_heartbeat", timeout=CALL_TIMEOUT,
                                                   csid=self.csid, **await self._usage())
                    await self._apply(reply if isinstance(reply, dict) else {}, nursery)
                else:
                    await self._register()
                    registered = True
                delay = self.interval
            except DfsError as exc:
                if registered and exc.errno in (errno.ENOENT, errno.ESTALE):
                    log.info("metaserver does not know this server; registering again",
                             csid=self.csid, meta=self.meta)
                    registered = False
                    continue
                # Another cluster's database will not change by itself: say it loudly.
                report = log.error if exc.errno == errno.EREMCHG else log.warning
                report("metaserver link failed", meta=self.meta, error=str(exc),
                       retry_in=delay)
                registered = False
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            await trio.sleep(self.interval)

    async def _register(self) -> None:
        chunks = [[chunk, version] for chunk, version in self.service.versions.items()]
        named = {"zone": self.zone} if self.zone else {}
        reply = await self.client.call("cs_register", timeout=CALL_TIMEOUT, csid=self.csid,
                                       addr=self.advertise, chunks=chunks,
                                       cluster=self.cluster, position=self.position,
                                       **named, **await self._usage())
        csid = reply.get("csid") if isinstance(reply, dict) else None
        if not _is_int(csid):
            raise DfsError(errno.EPROTO, f"metaserver answered cs_register without a csid: "
                                         f"{reply!r}")
        # A metaserver older than cluster ids names none: nothing to keep yet.
        cluster = reply.get("cluster")
        if _is_int(cluster) and cluster != self.cluster:
            await trio.to_thread.run_sync(_save_id, self.cluster_path, cluster)
            self.cluster = cluster
        if csid != self.csid:
            await trio.to_thread.run_sync(_save_id, self.csid_path, csid)
            self.csid = csid
        await self._keep_position(reply.get("position"), now=True)
        self._known.set()
        stale = _chunk_ids(reply.get("delete"))
        log.info("registered with the metaserver", csid=csid, meta=self.meta,
                 chunks=len(chunks), stale=len(stale))
        for chunk in stale:
            await self._delete(chunk)

    async def _keep_position(self, position, now: bool = False) -> None:
        """Keep where the database is (from a reply), at most every
        POSITION_EVERY seconds unless `now`: a database found older than
        that later is refused (see the module's docstring)."""
        if not (isinstance(position, list) and len(position) == 3
                and all(_is_int(n) for n in position)):
            return   # a metaserver older than positions
        if not now and time.monotonic() - self._position_kept < POSITION_EVERY:
            return
        await trio.to_thread.run_sync(_save_text, self.position_path,
                                      " ".join(map(str, position)))
        self.position = position
        self._position_kept = time.monotonic()

    async def _apply(self, reply: dict, nursery: trio.Nursery) -> None:
        await self._keep_position(reply.get("position"))
        for chunk in _chunk_ids(reply.get("delete")):
            await self._delete(chunk)
        for chunk, version, source in _copy_tasks(reply.get("replicate")):
            if chunk not in self._replicating:
                self._replicating.add(chunk)
                nursery.start_soon(self._replicate, chunk, version, source)

    async def _delete(self, chunk: int) -> None:
        try:
            await self.service.delete(chunk)
        except DfsError as exc:
            log.warning("cannot delete a replica the metaserver dropped", chunk=chunk,
                        error=str(exc))

    async def _replicate(self, chunk: int, version: int, source: str) -> None:
        try:
            async with self._limiter:
                await self.service.replicate(chunk, version, source)
        except DfsError as exc:
            log.warning("replication failed", chunk=chunk, version=version, source=source,
                        error=str(exc))
        finally:
            self._replicating.discard(chunk)

    async def _report_bad_replicas(self) -> None:
        """Tell the metaserver about every replica that failed a checksum,
        retrying until it has heard."""
        async for chunk, version in self.service.bad_replicas:
            await self._known.wait()
            delay = self.interval
            while True:
                try:
                    await self.client.call("cs_bad_chunk", timeout=CALL_TIMEOUT,
                                           csid=self.csid, chunk=chunk, version=version)
                    break
                except DfsError as exc:
                    log.warning("cannot report a bad replica yet", chunk=chunk,
                                version=version, error=str(exc), retry_in=delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
            log.info("bad replica reported", chunk=chunk, version=version, csid=self.csid)
