"""Chunk servers as the metaserver sees them: address, space, last heartbeat.

The csid and address are persistent (LMDB); space and liveness are in memory,
so after a restart every server counts as dead until it is heard from again.
"""

import time
from dataclasses import dataclass


@dataclass
class ServerState:
    csid: int
    addr: str
    capacity: int = 0
    used: int = 0
    last_seen: float = 0.0
    # Being emptied (dfs chunkserver drain): it takes no new chunk, and what
    # it holds is copied elsewhere and then deleted from it.
    draining: bool = False

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

    def known(self, csid: int, addr: str, draining: bool) -> None:
        """A server recorded on disk (not heard from yet, if this is the start)."""
        self.servers.setdefault(csid, ServerState(csid, addr)).draining = draining

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

    def place(self, count: int, room: int, exclude=()) -> list[ServerState]:
        """Up to `count` usable servers with `room` bytes free, most free first.

        The chosen servers are charged `room` at once, so placements between two
        heartbeats spread instead of piling onto the same server.
        """
        chosen = self.candidates(room, exclude)[:count]
        for server in chosen:
            server.used += room
        return chosen
