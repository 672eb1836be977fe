"""Which sessions hold which inodes open, and who keeps each orphan alive.

Open counts live in memory only, so an open or a close costs no disk sync.
What must survive a restart is durable in the "orphans" table: every unlinked
inode still held, with the sessions holding it. After a restart the counts
are gone until clients re-announce them (dfs.session.MetaLink does so on every
reconnect, before any other request on the new connection). Until a restored
session has spoken to us it is presumed to hold every inode unlinked
meanwhile; it stops being presumed on its first request other than a
re-announce, or when it ends. A session that never speaks expires one TTL
after the start, so this grace is bounded.

Also in memory: which sessions write an inode quietly (their fdatasyncs
record the mtime up to a second later), so that other sessions' opens know
their caches of it cannot be trusted. A restart forgets this too; clients
re-announce it, and until every restored session has, any file may be changing.

The writer thread (unlink, create) and the trio thread (open, release) both
use this, hence the lock.
"""

import threading


class OpenFiles:
    def __init__(self):
        self.lock = threading.Lock()
        # ino -> session -> open handles
        self.counts: dict[int, dict[int, int]] = {}
        # Orphan inode -> sessions keeping it, as written to LMDB by the
        # latest commit or the running batch (the store stays authoritative).
        self.orphans: dict[int, set[int]] = {}
        # Sessions restored at start that have not spoken yet.
        self.restored: set[int] = set()
        # ino -> sessions holding it that write it quietly
        self.quiet: dict[int, set[int]] = {}

    def hold(self, ino: int, sid: int, count: int | None = None) -> None:
        """One more handle, or exactly `count` handles (a re-announce)."""
        with self.lock:
            per_ino = self.counts.setdefault(ino, {})
            per_ino[sid] = count if count is not None else per_ino.get(sid, 0) + 1

    def ensure_held(self, ino: int, sid: int) -> None:
        with self.lock:
            per_ino = self.counts.setdefault(ino, {})
            per_ino[sid] = max(per_ino.get(sid, 0), 1)

    def release(self, ino: int, sid: int) -> int:
        """One handle fewer; returns how many the session still has."""
        with self.lock:
            per_ino = self.counts.get(ino, {})
            left = per_ino.get(sid, 0) - 1
            if left > 0:
                per_ino[sid] = left
                return left
            self._forget(ino, sid)
            return 0

    def set_quiet(self, ino: int, sid: int, quiet: bool) -> None:
        """Record whether a session holding `ino` writes it quietly."""
        with self.lock:
            if quiet and sid in self.counts.get(ino, ()):
                self.quiet.setdefault(ino, set()).add(sid)
            else:
                self._unquiet(ino, sid)

    def changing(self, ino: int, sid: int) -> bool:
        """Whether a session other than `sid` may have synced writes to `ino`
        that no commit recorded yet."""
        with self.lock:
            return bool(self.quiet.get(ino, set()) - {sid} or self.restored - {sid})

    def drop(self, ino: int, sid: int) -> None:
        with self.lock:
            self._forget(ino, sid)

    def _forget(self, ino: int, sid: int) -> None:
        per_ino = self.counts.get(ino)
        if per_ino is not None:
            per_ino.pop(sid, None)
            if not per_ino:
                del self.counts[ino]
        self._unquiet(ino, sid)

    def _unquiet(self, ino: int, sid: int) -> None:
        writers = self.quiet.get(ino)
        if writers is not None:
            writers.discard(sid)
            if not writers:
                del self.quiet[ino]

    def end_session(self, sid: int) -> list[int]:
        """Forget the session; returns the orphans it was keeping."""
        with self.lock:
            self.restored.discard(sid)
            for ino in [ino for ino, per_ino in self.counts.items() if sid in per_ino]:
                self._forget(ino, sid)
            return [ino for ino, holders in self.orphans.items() if sid in holders]

    def spoke(self, sid: int) -> list[int]:
        """A restored session has re-announced what it holds; returns the
        orphans it is recorded as keeping but did not re-announce."""
        with self.lock:
            if sid not in self.restored:
                return []
            self.restored.discard(sid)
            return [ino for ino, holders in self.orphans.items()
                    if sid in holders and sid not in self.counts.get(ino, {})]

    def keepers(self, ino: int, recorded: set[int] | None) -> set[int]:
        """Who keeps unlinked inode `ino` alive: `recorded` (from LMDB) and those
        holding it open now; if it has just lost its last name (`recorded` is
        None), also every restored session still silent, which may hold it
        without our knowing. Empty means it may be destroyed; the caller
        writes the answer in the same transaction."""
        with self.lock:
            keepers = set(self.counts.get(ino, ()))
            keepers |= self.restored if recorded is None else recorded
            if keepers:
                self.orphans[ino] = keepers
            else:
                self.orphans.pop(ino, None)
            return keepers

    def unkept(self, ino: int, sid: int) -> bool:
        """True if `ino` is an orphan and `sid` is not yet recorded keeping it."""
        with self.lock:
            holders = self.orphans.get(ino)
            return holders is not None and sid not in holders

    def keeps(self, ino: int, sid: int) -> bool:
        with self.lock:
            return sid in self.orphans.get(ino, ())
