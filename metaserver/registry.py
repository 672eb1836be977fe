"""Chunk servers as the metaserver sees them: address, zone, space, last
heartbeat.

The csid, address and zone are persistent (LMDB); space and liveness are in
memory, so after a restart every server counts as dead until it is heard
from again.

A zone is a failure domain: the servers that one fault can take together (a
host by default, a rack or a room if the servers say so). The copies of a
chunk go to as many zones as the cluster has, before two go to one zone.
"""

import time
from dataclasses import dataclass

from dfs.rpc import parse_addr


def default_zone(addr: str) -> str:
    """The zone of a server that names none: its host, so that the copies of
    a chunk go to different hosts before two go to one host's disks."""
    return parse_addr(addr)[0]


@dataclass
class ServerState:
    csid: int
    addr: str
    zone: str = ""
    capacity: int = 0
    used: int = 0
    last_seen: float = 0.0
    # Being emptied (dfs chunkserver drain): it takes no new chunk, and what
    # it holds is copied elsewhere and then deleted from it.
    draining: bool = False
    # The host its registration came from, as this metaserver saw it.
    peer: str = ""

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used)

    @property
    def fullness(self) -> float:
        """The share of its disk in use (1 while its size is not known)."""
        return self.used / self.capacity if self.capacity else 1.0


class Registry:
    def __init__(self, heartbeat_timeout: float):
        self.heartbeat_timeout = heartbeat_timeout
        self.servers: dict[int, ServerState] = {}

    def known(self, csid: int, addr: str, draining: bool, zone: str | None = None,
              peer: str = "") -> None:
        """A server recorded on disk (not heard from yet, if this is the start),
        or registering now from host `peer`, in `zone` if it names one."""
        server = self.servers.setdefault(csid, ServerState(csid, addr))
        server.draining = draining
        server.zone = zone or default_zone(addr)
        server.peer = peer

    def forget(self, csid: int) -> None:
        self.servers.pop(csid, None)

    def heard(self, csid: int, addr: str, capacity: int, used: int) -> None:
        server = self.servers.setdefault(csid, ServerState(csid, addr))
        server.addr, server.capacity, server.used = addr, capacity, used
        server.last_seen = time.monotonic()

    def alive(self, csid: int) -> bool:
        server = self.servers.get(csid)
        return (server is not None and server.last_seen > 0
                and time.monotonic() - server.last_seen <= self.heartbeat_timeout)

    def live(self) -> list[ServerState]:
        return [s for s in self.servers.values() if self.alive(s.csid)]

    def usable(self) -> list[ServerState]:
        """Live servers that take new chunks: not draining."""
        return [s for s in self.live() if not s.draining]

    def draining(self, csid: int) -> bool:
        server = self.servers.get(csid)
        return server is not None and server.draining

    def addr(self, csid: int) -> str:
        return self.servers[csid].addr

    def live_locations(self, locations: list[int]) -> list[list]:
        return [[csid, self.servers[csid].addr] for csid in locations if self.alive(csid)]

    def candidates(self, room: int, exclude=()) -> list[ServerState]:
        """Usable servers with `room` bytes free, most free first."""
        found = [s for s in self.usable() if s.free >= room and s.csid not in exclude]
        found.sort(key=lambda s: s.free, reverse=True)
        return found

    def zones(self, csids) -> set[str]:
        return {self.servers[csid].zone for csid in csids if csid in self.servers}

    def zones_from(self, host: str) -> list[str]:
        """The zones of the servers that registered from `host`: those a
        client on that host reads from first."""
        return sorted({s.zone for s in self.servers.values() if host and s.peer == host})

    def place(self, count: int, room: int, exclude=(), holders=()) -> list[ServerState]:
        """Up to `count` usable servers with `room` bytes free for a chunk held
        by `holders`: each from a zone neither a holder nor an earlier pick is
        in while there is one, most free first.

        The chosen servers are charged `room` at once, so placements between two
        heartbeats spread instead of piling onto the same server.
        """
        taken = self.zones(holders)
        left = self.candidates(room, exclude)
        chosen = []
        while left and len(chosen) < count:
            pick = next((s for s in left if s.zone not in taken), left[0])
            left.remove(pick)
            taken.add(pick.zone)
            chosen.append(pick)
        for server in chosen:
            server.used += room
        return chosen

    def keep(self, csids: list[int], count: int) -> list[int]:
        """Which `count` of a chunk's replicas on `csids` to keep: one in each
        zone first, then the others; the emptiest disks first within each."""
        spread, doubled, zones = [], [], set()
        for csid in sorted(csids, key=lambda c: self.servers[c].fullness):
            zone = self.servers[csid].zone
            (doubled if zone in zones else spread).append(csid)
            zones.add(zone)
        return (spread + doubled)[:count]
