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
    """Quota promised to writers: (session, ino) -> how far the file may grow.

    Indexed by quota directory, so that a check under one quota reads the
    grants under it alone, not every file being written in the cluster."""

    def __init__(self):
        self.grants: dict[tuple[int, int], Reservation] = {}
        self.by_quota: dict[int, set[tuple[int, int]]] = {}

    def outstanding(self, quotas, sizes_of, ino: int, session: int | None = None
                    ) -> dict[int, int]:
        """Bytes promised beyond current file sizes, per quota directory of
        `quotas`, leaving out the grants on `ino` (only `session`'s, if
        given). `sizes_of(inodes)` maps inodes to their sizes."""
        keys: set[tuple[int, int]] = set()
        for quota in quotas:
            keys.update(self.by_quota.get(quota, ()))
        keys = {key for key in keys
                if key[1] != ino or (session is not None and key[0] != session)}
        if not keys:
            return {}
        extras = self._beyond(keys, sizes_of)
        held = {}
        for quota in quotas:
            total = sum(extras.get(key, 0) for key in self.by_quota.get(quota, ()))
            if total:
                held[quota] = total
        return held

    def per_session(self, sizes_of) -> dict[int, tuple[int, int]]:
        """Session -> (files it holds room for under a quota, bytes of that
        room beyond their sizes)."""
        keys = {key for key, grant in self.grants.items() if grant.quotas}
        extras = self._beyond(keys, sizes_of) if keys else {}
        found: dict[int, tuple[int, int]] = {}
        for sid, ino in keys:
            files, nbytes = found.get(sid, (0, 0))
            found[sid] = (files + 1, nbytes + extras.get((sid, ino), 0))
        return found

    def _beyond(self, keys, sizes_of) -> dict[tuple[int, int], int]:
        """How far each grant of `keys` reaches past its file's size, where it does."""
        sizes = sizes_of({key[1] for key in keys})
        extras = {}
        for key in keys:
            end = self.grants[key].end
            extra = end - sizes.get(key[1], end)
            if extra > 0:
                extras[key] = extra
        return extras

    def grant(self, sid: int, ino: int, reservation: Reservation) -> None:
        self.drop(sid, ino)
        self.grants[(sid, ino)] = reservation
        for quota in reservation.quotas:
            self.by_quota.setdefault(quota, set()).add((sid, ino))

    def drop(self, sid: int, ino: int | None = None) -> None:
        keys = [(sid, ino)] if ino is not None else [k for k in self.grants if k[0] == sid]
        for key in keys:
            grant = self.grants.pop(key, None)
            for quota in grant.quotas if grant is not None else ():
                under = self.by_quota[quota]
                under.discard(key)
                if not under:
                    del self.by_quota[quota]


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
