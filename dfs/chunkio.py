"""Talking to chunk servers on behalf of one mount: replica reads with failover,
writes to every replica in parallel, and syncs.

Reads go to a replica in the mount's own zone when a chunk has one, so that
a mount on a chunk server's host (or Kubernetes node) reads from that server
and not across the network; otherwise, and among several in its zone, reads
of different chunks take turns over the replicas. The mount's zone is the
one it is given (`dfs mount --zone`), else those of the chunk servers on its
host (session.py).

The metaserver tells where a chunk lives (`Placement`); this module never asks
it anything, so the data path has no metaserver round trip per block.
"""

import errno
from collections.abc import Callable, Collection
from dataclasses import dataclass

import trio

from . import logs, transit
from .errors import DfsError
from .framing import Pieces, encode_fields
from .ops import CHUNK
from .rpc import ClientPool

log = logs.get_logger("client")

# Errors after which another replica (or a fresh placement) may succeed.
# EBADMSG: data damaged on its way (transit.py), here only once sending it
# again has not helped.
REPLICA_ERRORS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
                            errno.ESTALE, errno.ENOENT, errno.EIO, errno.ESHUTDOWN,
                            errno.EBADMSG})


class ReplicaFailure(DfsError):
    """Some replicas failed an operation that must reach them all; `failed`
    maps each one's address to its error (the first error gives the errno)."""

    def __init__(self, chunk: int, failed: dict[str, DfsError]):
        first = next(iter(failed.values()))
        super().__init__(first.errno, f"chunk {chunk}: {first.message}")
        self.failed = failed


@dataclass(frozen=True, slots=True)
class Placement:
    """A chunk id, its current version, the addresses of its live replicas
    and the zone of each (empty from a metaserver older than zones)."""

    chunk: int
    version: int
    servers: tuple[str, ...]
    lease_until: float = 0.0
    zones: tuple[str, ...] = ()

    @classmethod
    def from_wire(cls, reply: dict) -> "Placement":
        servers = tuple(addr for _csid, addr in reply["servers"])
        zones = tuple(reply.get("zones") or ())
        return cls(reply["chunk"], reply["version"], servers,
                   float(reply.get("lease_until") or 0.0),
                   zones if len(zones) == len(servers) else ())

    @property
    def is_hole(self) -> bool:
        return self.chunk == 0


class ChunkIO:
    def __init__(self, secret: bytes, timeout: float = 30.0,
                 zones: Callable[[], Collection[str]] = tuple):
        self.pool = ClientPool(secret, CHUNK, connect_timeout=3.0)
        self.timeout = timeout
        # The mount's zones, whose replicas are read first (none: no preference).
        self.zones = zones
        # Spread reads of different chunks over their replicas.
        self._turn = 0
        # Bytes read from replicas in this mount's zone and in others.
        self.read_bytes = {"same": 0, "other": 0}

    def _read_order(self, placement: Placement) -> list[tuple[str, bool]]:
        """The replicas to try, each with whether it is in this mount's zone:
        those that are first, each list starting at the next turn."""
        servers = placement.servers
        zones = placement.zones or ("",) * len(servers)
        ours = self.zones()
        self._turn += 1
        start = (placement.chunk + self._turn) % len(servers)
        turned = [(servers[i], zones[i] in ours)
                  for i in (*range(start, len(servers)), *range(start))]
        return sorted(turned, key=lambda replica: not replica[1])

    async def read(self, placement: Placement, offset: int, length: int) -> bytes:
        """Read from the first replica that answers; raise the last error if none does."""
        if not placement.servers:
            raise DfsError(errno.EIO, f"chunk {placement.chunk} has no live replica")
        last_error = None
        for addr, near in self._read_order(placement):
            try:
                reply = await self.pool.get(addr).call(
                    "read", timeout=self.timeout, chunk=placement.chunk,
                    version=placement.version, offset=offset, length=length)
                transit.check_pieces(reply["data"], offset, reply.get("crcs"),
                                     f"chunk {placement.chunk} from {addr}")
                self.read_bytes["same" if near else "other"] += len(reply["data"])
                return reply["data"]
            except DfsError as exc:
                if exc.errno not in REPLICA_ERRORS:
                    raise
                log.warning("replica read failed", chunk=placement.chunk, server=addr,
                            error=str(exc))
                last_error = exc
        raise last_error

    async def _on_all(self, placement: Placement, op: str, fields_for) -> None:
        """Send one request to every replica; those whose data arrives damaged
        get it again, up to transit.RETRIES times. The request's fields are
        fields_for(crc), crc true for a server that takes CRCs (auth.py's
        protocol 2) and false for an older one."""
        if not placement.servers:
            raise DfsError(errno.EIO, f"chunk {placement.chunk} has no live replica")
        ids = {"chunk": placement.chunk, "version": placement.version}
        encoded: dict[bool, list] = {}

        def packed(protocol: int) -> list:
            crc = protocol >= transit.PROTOCOL
            if crc not in encoded:
                encoded[crc] = encode_fields(dict(fields_for(crc), **ids))
            return encoded[crc]

        servers, failures = placement.servers, {}
        for attempt in range(transit.RETRIES + 1):
            failures.update(await self._send_all(placement.chunk, servers, op, packed))
            servers = [addr for addr, exc in failures.items() if exc.errno == errno.EBADMSG]
            if not servers or attempt == transit.RETRIES:
                break
            for addr in servers:
                del failures[addr]
        if failures:
            raise ReplicaFailure(placement.chunk, failures)

    async def _send_all(self, chunk: int, servers, op: str, packed) -> dict:
        """The errors of the servers that failed the request, packed(protocol)
        giving the request for each server's protocol."""
        failures: dict[str, DfsError] = {}

        def failed(addr: str, exc: DfsError) -> None:
            failures[addr] = exc
            log.warning("replica failed", op=op, chunk=chunk, server=addr, error=str(exc))

        # Every replica gets the request before any reply is awaited: the
        # replicas work in parallel without a task per replica.
        sent = []
        for addr in servers:
            client = self.pool.get(addr)
            try:
                sent.append((addr, await client.send_packed(op,
                                                            packed(await client.protocol()))))
            except DfsError as exc:
                failed(addr, exc)
        deadline = trio.current_time() + self.timeout
        for addr, reply in sent:
            try:
                await reply.result(max(deadline - trio.current_time(), 0.0))
            except DfsError as exc:
                failed(addr, exc)
        return failures

    async def write(self, placement: Placement, extents: list[tuple[int, bytes | Pieces]],
                    sync: bool = False) -> None:
        """Write (offset, data) extents in order; returns once every replica
        holds them, and with `sync` once they are on disk."""
        if len(extents) == 1:
            offset, data = extents[0]
            crc = transit.crc_of(data)
            await self._on_all(placement, "write", lambda with_crc: dict(
                offset=offset, data=data, sync=sync, **({"crc": crc} if with_crc else {})))
        else:
            joined = [(offset, data.join() if isinstance(data, Pieces) else data)
                      for offset, data in extents]
            crcs = [transit.crc_of(data) for _, data in joined]
            await self._on_all(placement, "write_extents", lambda with_crc: dict(
                sync=sync, extents=[[offset, data, crc] if with_crc else [offset, data]
                                    for (offset, data), crc in zip(joined, crcs)]))

    async def sync(self, placement: Placement) -> None:
        """Returns once every replica has the chunk durably on disk."""
        await self._on_all(placement, "sync", lambda _crc: {})

    async def aclose(self) -> None:
        await self.pool.aclose()
