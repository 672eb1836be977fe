"""Directory leases: a mount may hold one on a folder to answer by itself that a
name is not there, the lookup before every create, rename and mkdir.

A lease comes with the folder's names as they are when it is granted
(`dir_lease`). Before the metaserver answers any change that adds a name to
the folder, made by another session or by nobody's (the dfs command, the CSI
controller, the trash), every other holder is asked to let go (`recall`), and
the change's reply waits until each one has (`dir_poll` carries the release)
or its lease ran out. Names that go away recall nothing: a holder's names are
a superset of the folder's, and a name it holds that is gone only means it
asks the metaserver, as without a lease.

Leases last LEASE seconds from the holder's last poll, which it sends every
POLL_WAIT seconds or at once after a recall. They live in memory only: after
a restart the metaserver does not know which restored session holds what. A
mount lets go of all its leases whenever it connects anew, before anything
else on the new connection, so a restored session is known to hold none once
a request naming it arrives. Until every restored session has been heard from
or one LEASE has passed since the start (by then the leases of the last run
have run out), a change that adds a name waits.

Each grant has its own number, so that a release or a recall of an old lease
never touches a newer one on the same folder.

An exclusive lease (asked for by a mount that creates files without waiting
for the metaserver, dfs/createqueue.py) is one no other session holds a lease
beside: before it is granted, the others are recalled and the changes others
have in flight in the folder finish. Its holder may have created files there
that the metaserver does not know yet, so any request of another session
that names the folder (a lookup, a listing, its attributes, a change in it)
waits until the holder has sent what it made and let go (`settle`), and
requests that look at whole trees (a snapshot, a quota, an rmdir, a rename)
wait for every exclusive lease (`settle_all`).
"""

import errno
import itertools
import secrets
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import trio

from dfs import logs
from dfs.errors import DfsError

log = logs.get_logger("metaserver")

# Seconds a lease lasts past its holder's last poll. Also the longest a change
# waits for a holder that does not answer (frozen, or cut off).
LEASE = 3.0
# The longest a poll waits for a recall before answering with none; well
# inside LEASE, so that a holder renews in time.
POLL_WAIT = 1.0
# After a restart, how long requests naming folders wait for a restored
# session that may have changes made ahead to send again (see `restored`):
# longer than LEASE, since a change missed then is not only a name looked up
# once more but one another mount does not see; a live mount reconnects
# within a second or two.
CREATOR_GRACE = 10.0
# The most a poll may ask to wait (it waits POLL_WAIT at most regardless).
MAX_WAIT = 60.0
# A folder is not leased if its names would take more than this of a mount's
# memory, counting NAME_OVERHEAD bytes for each besides its own (the names
# travel in one reply, and the mount keeps them as a set of bytes objects).
MAX_NAME_BYTES = 2 << 20
NAME_OVERHEAD = 64
MAX_LEASES_PER_SESSION = 64

# The session a change is made for (its `writer`) and the folders the request
# names: that session's leases on those are not recalled.
writer: ContextVar[tuple[int | None, set]] = ContextVar("dir_lease_writer",
                                                         default=(None, set()))


@dataclass
class Grant:
    number: int
    until: float
    exclusive: bool = False


@dataclass
class Holder:
    """One session's leases: folder -> grant; recalls not yet released."""
    grants: dict[int, Grant] = field(default_factory=dict)
    recalled: set[tuple[int, int]] = field(default_factory=set)
    wake: trio.Event = field(default_factory=trio.Event)


class DirLeases:
    def __init__(self):
        # Told to mounts with every grant and poll: a mount that sees another
        # holds no lease from this run.
        self.instance = secrets.randbits(62) + 1
        self.holders: dict[int, Holder] = {}
        self.by_folder: dict[int, set[int]] = {}
        self._numbers = itertools.count(1)
        self._released = trio.Event()
        # Until then (monotonic), changes that add names wait while some
        # restored session is not heard from (see above).
        self.grace_until = 0.0
        self.unheard: set[int] = set()
        self._all_heard = trio.Event()
        # Those of them that were handed inode numbers: they may have made
        # files under exclusive leases that they send again once reconnected.
        self.unheard_creators: set[int] = set()
        self._creators_heard = trio.Event()
        self.creators_until = 0.0
        self.recalls = 0
        self.expired = 0
        # Exclusive grants held: while there are none, `settle` costs nothing.
        self.exclusive = 0
        # Folder -> requester -> changes in progress there (see `changing`).
        self.in_flight: dict[int, dict[int | None, int]] = {}
        # Where grant_exclusive waits for them to finish.
        self._quieter = trio.lowlevel.ParkingLot()

    def restored(self, sessions, creators=()) -> None:
        """`sessions` of the last run were restored: they may hold leases we
        never knew of, and `creators` among them files made under those."""
        self.unheard = set(sessions)
        self.unheard_creators = set(creators) & self.unheard
        self.grace_until = time.monotonic() + LEASE
        self.creators_until = time.monotonic() + CREATOR_GRACE

    def heard(self, session: int) -> None:
        """A request naming `session` came: it holds no lease from the last
        run (a mount sends the files it made under one before anything else)."""
        if session in self.unheard:
            self.unheard.discard(session)
            if not self.unheard:
                self._all_heard.set()
            self.unheard_creators.discard(session)
            if not self.unheard_creators:
                self._creators_heard.set()

    def count(self) -> int:
        return sum(len(holder.grants) for holder in self.holders.values())

    def held_by(self, session: int) -> tuple[int, int]:
        """The leases `session` holds, and how many of them are exclusive."""
        holder = self.holders.get(session)
        if holder is None:
            return 0, 0
        return len(holder.grants), sum(grant.exclusive for grant in holder.grants.values())

    def names(self, tx, folder: int) -> list[bytes]:
        """The names in `folder`, for a grant; EFBIG if too many to lease."""
        tx.directory(folder)
        names, size = [], 0
        for _, name in tx.entries_after(folder, 0):
            size += len(name) + NAME_OVERHEAD
            if size > MAX_NAME_BYTES:
                raise DfsError(errno.EFBIG, f"directory {folder} has too many names to lease")
            names.append(name)
        return names

    def grant(self, session: int, folder: int, exclusive: bool = False) -> int:
        """Lease `folder` to `session`; the grant's number."""
        holder = self.holders.setdefault(session, Holder())
        if folder not in holder.grants and len(holder.grants) >= MAX_LEASES_PER_SESSION:
            raise DfsError(errno.EMFILE, f"session {session} holds {MAX_LEASES_PER_SESSION} "
                                         "directory leases; release one first")
        number = next(self._numbers)
        old = holder.grants.get(folder)
        self.exclusive += exclusive - (old is not None and old.exclusive)
        holder.grants[folder] = Grant(number, time.monotonic() + LEASE, exclusive)
        self.by_folder.setdefault(folder, set()).add(session)
        return number

    async def grant_exclusive(self, session: int, folder: int) -> int:
        """Lease `folder` to `session` alone; the grant's number, once every
        other session's lease on it is let go of and the changes others began
        there have finished (the names read after this are all there are)."""
        number = self.grant(session, folder, exclusive=True)
        await self._recall_from({folder}, lambda holder, _: holder != session)
        while any(requester != session for requester in self.in_flight.get(folder, ())):
            await self._quieter.park()
        return number

    @contextmanager
    def changing(self, requester: int | None, folders: set):
        """Around a change by `requester` naming `folders`."""
        for folder in folders:
            counts = self.in_flight.setdefault(folder, {})
            counts[requester] = counts.get(requester, 0) + 1
        try:
            yield
        finally:
            for folder in folders:
                counts = self.in_flight[folder]
                counts[requester] -= 1
                if not counts[requester]:
                    del counts[requester]
                    if not counts:
                        del self.in_flight[folder]
            self._quieter.unpark_all()

    async def settle(self, requester: int | None, folders: set, resent: bool = False) -> None:
        """Before a request of `requester` that names `folders`: another
        session's exclusive lease on one of them is let go of (its holder
        sends the files it made there first) or has run out. Unless the
        request is such changes `resent`, after a restart it first waits for
        every restored session that may have some (CREATOR_GRACE at most)."""
        if not resent and self.unheard_creators and time.monotonic() < self.creators_until:
            with trio.move_on_after(self.creators_until - time.monotonic()):
                await self._creators_heard.wait()
        if self.exclusive:
            await self._recall_from(folders, lambda holder, _: holder != requester,
                                    exclusive_only=True)

    async def settle_all(self, requester: int | None) -> None:
        """`settle` for every folder: before a request that looks at a whole tree."""
        if self.exclusive or self.unheard_creators:
            folders = {folder for session, holder in self.holders.items()
                       if session != requester
                       for folder, grant in holder.grants.items() if grant.exclusive}
            await self.settle(requester, folders)

    def release(self, session: int, released: list) -> None:
        """Let go of the [folder, number] pairs `released` (those still held)."""
        if not all(isinstance(pair, list) and len(pair) == 2
                   and all(type(n) is int for n in pair) for pair in released):
            raise DfsError(errno.EINVAL, "dir_poll: released holds [folder, number] pairs")
        holder = self.holders.get(session)
        if holder is None:
            return
        for folder, number in released:
            holder.recalled.discard((folder, number))
            grant = holder.grants.get(folder)
            if grant is not None and grant.number == number:
                self._drop(session, holder, folder)
        self._wake_recallers()

    def renew(self, session: int) -> None:
        """The session's leases last LEASE from now, but those recalled: a
        holder that goes on polling without letting go of one still loses it."""
        holder = self.holders.get(session)
        if holder is not None:
            until = time.monotonic() + LEASE
            for folder, grant in holder.grants.items():
                if (folder, grant.number) not in holder.recalled:
                    grant.until = until

    async def poll(self, session: int, released: list, wait: float) -> dict:
        """Let go of `released`, renew the rest and wait up to `wait` seconds
        for a recall. -> {"recall": [[folder, number], ...] to let go of,
        "held": [number, ...] of every lease the session still has and may
        go on using (not those recalled)}."""
        if not 0 <= wait <= MAX_WAIT:
            raise DfsError(errno.EINVAL, f"dir_poll: wait must be 0 to {MAX_WAIT} seconds")
        self.release(session, released)
        self.renew(session)
        holder = self.holders.get(session)
        if holder is None:
            return {"recall": [], "held": []}
        if not holder.recalled:
            with trio.move_on_after(min(wait, POLL_WAIT)):
                await holder.wake.wait()
        if holder.wake.is_set():
            holder.wake = trio.Event()
        return {"recall": [list(pair) for pair in sorted(holder.recalled)],
                "held": [grant.number for folder, grant in holder.grants.items()
                         if (folder, grant.number) not in holder.recalled]}

    def end_session(self, session: int) -> None:
        self.heard(session)
        holder = self.holders.pop(session, None)
        if holder is None:
            return
        for folder, grant in holder.grants.items():
            self._unindex(session, folder)
            self.exclusive -= grant.exclusive
        # Changes waiting for these leases see them gone.
        holder.grants.clear()
        self._wake_recallers()

    async def recall(self, folders: set[int]) -> None:
        """Before a change that added names to `folders` is answered: every
        other session's lease on them is let go of, or has run out."""
        if self.unheard and time.monotonic() < self.grace_until:
            with trio.move_on_after(self.grace_until - time.monotonic()):
                await self._all_heard.wait()
        exempt, named = writer.get()
        await self._recall_from(
            folders, lambda session, folder: not (session == exempt and folder in named))

    async def _recall_from(self, folders, whose, exclusive_only: bool = False) -> None:
        """Recall the leases on `folders` of the sessions `whose(session,
        folder)` picks (only exclusive ones if `exclusive_only`) and wait
        until each is let go of or has run out."""
        waiting: list[tuple[int, int, Holder, int]] = []
        for folder in folders:
            for session in self.by_folder.get(folder, ()):
                holder = self.holders[session]
                grant = holder.grants[folder]
                if not whose(session, folder) or exclusive_only and not grant.exclusive:
                    continue
                holder.recalled.add((folder, grant.number))
                holder.wake.set()
                waiting.append((session, folder, holder, grant.number))
        if not waiting:
            return
        self.recalls += len(waiting)
        while True:
            now = time.monotonic()
            held = []
            for session, folder, holder, number in waiting:
                grant = holder.grants.get(folder)
                if grant is None or grant.number != number:
                    continue
                if grant.until <= now:
                    log.warning("directory lease ran out without a release", session=session,
                                ino=folder)
                    self.expired += 1
                    holder.recalled.discard((folder, number))
                    self._drop(session, holder, folder)
                    continue
                held.append(((session, folder, holder, number), grant.until))
            if not held:
                return
            waiting = [entry for entry, _ in held]
            with trio.move_on_after(max(until for _, until in held) - now):
                await self._released.wait()

    def _drop(self, session: int, holder: Holder, folder: int) -> None:
        self.exclusive -= holder.grants.pop(folder).exclusive
        self._unindex(session, folder)

    def _unindex(self, session: int, folder: int) -> None:
        sessions = self.by_folder.get(folder)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.by_folder[folder]

    def _wake_recallers(self) -> None:
        self._released.set()
        self._released = trio.Event()
