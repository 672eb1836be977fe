"""What the metaserver holds in memory only: session deadlines, quota
reservations and write leases. All of it may be lost on restart: sessions get
a fresh deadline, clients reserve again, and leases are assumed held for one
lease length.
"""

import errno
import time
from dataclasses import dataclass

from dfs.errors import DfsError


class Sessions:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self.deadlines: dict[int, float] = {}

    def start(self, sid: int) -> None:
        self.deadlines[sid] = time.monotonic() + self.ttl

    def check(self, sid: int) -> None:
        if sid not in self.deadlines:
            raise DfsError(errno.ESTALE, f"session {sid} is unknown or expired")

    def renew(self, sid: int) -> None:
        self.check(sid)
        self.start(sid)

    def end(self, sid: int) -> None:
        self.deadlines.pop(sid, None)

    def expired(self) -> list[int]:
        now = time.monotonic()
        return [sid for sid, deadline in self.deadlines.items() if deadline < now]


@dataclass
class Reservation:
    # What the writer asked for: held against everyone else's growth.
    end: int
    # How far it may write before asking again. The part beyond `end` is not
    # held, so one writer's lookahead never starves another file; if others
    # take that room meanwhile, the commit gets EDQUOT and usage stays exact.
    granted: int
    # The quota directories the grant was checked against.
    quotas: tuple


class Reservations:
    """Quota promised to writers: (session, ino) -> how far the file may grow."""

    def __init__(self):
        self.grants: dict[tuple[int, int], Reservation] = {}

    def outstanding(self, sizes: dict[int, int], skip) -> dict[int, int]:
        """Bytes promised beyond current file sizes, per quota directory.

        `sizes` maps an inode to its size; `skip(session, ino)` excludes grants.
        """
        held: dict[int, int] = {}
        for (sid, ino), grant in self.grants.items():
            if skip(sid, ino):
                continue
            extra = grant.end - sizes.get(ino, grant.end)
            if extra > 0:
                for quota in grant.quotas:
                    held[quota] = held.get(quota, 0) + extra
        return held

    def inodes(self) -> set[int]:
        return {ino for _, ino in self.grants}

    def grant(self, sid: int, ino: int, reservation: Reservation) -> None:
        self.grants[(sid, ino)] = reservation

    def drop(self, sid: int, ino: int | None = None) -> None:
        for key in [k for k in self.grants if k[0] == sid and (ino is None or k[1] == ino)]:
            del self.grants[key]


class Leases:
    """Write leases on chunks: while one is active the version stays put.

    The leases granted before a restart are not known, yet clients may still
    write under them; so for one lease length after the start every chunk
    counts as leased (until revoked), and whatever relies on "no lease, no
    writer" (a copy without fencing) waits or fences instead.
    """

    def __init__(self, duration: float):
        self.duration = duration
        self.until: dict[int, float] = {}
        self.grace_until = time.time() + duration

    def active(self, chunk_id: int) -> float | None:
        now = time.time()
        until = self.until.get(chunk_id, self.grace_until)
        if until > now:
            return until
        if now >= self.grace_until:
            self.until.pop(chunk_id, None)
        return None

    def grant(self, chunk_id: int) -> float:
        until = self.until[chunk_id] = time.time() + self.duration
        return until

    def revoke(self, chunk_id: int) -> None:
        self.until[chunk_id] = 0.0
