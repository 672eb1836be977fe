"""The mount's directory leases (see metaserver/dirleases.py): folders whose
names it knows well enough to answer by itself that a name is not there.

Every create, mkdir, rename and symlink begins with the kernel looking up a
name that does not exist yet, a round trip to the metaserver. After a few
such misses in one folder within a second the mount asks for a lease on it,
which brings the folder's names; from then on a lookup of a name not among
them is answered at once. The names kept are a superset of the folder's: a
name this mount adds is put in before the change is sent, one it removes is
taken out after the change is done, and before anyone else's change that
adds a name is answered, the metaserver recalls the lease.

A lease is trusted only until its end as this mount counts it: from the
sending of the last poll the metaserver answered, LEASE less a margin, on a
clock that goes on while the host is suspended. The poll runs while any
lease is held: once a second, and at once after a recall, to release it.

A mount that makes files ahead (createqueue.py) asks for exclusive leases,
and before it lets go of any lease it waits until the metaserver knows every
file it made (`settle`).
"""

import dataclasses
import errno
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from . import logs
from .errors import DfsError
from .records import Attr
from .session import MetaLink

log = logs.get_logger("client")

# Lookups that found nothing in a folder before it is leased; twice as many
# after each recall (another mount adds names there too), up to 2**MAX_BACKOFF
# times as many, so that two mounts busy in one folder do not fetch its names
# back and forth.
MISSES_BEFORE_LEASE = 2
MAX_BACKOFF = 6
# Misses count towards a lease only this close together: a folder where names
# are made now and then is not worth fetching the names of (they may be many).
MISS_WINDOW = 1.0
# Folders whose misses, recalls and refusals are remembered (the latest ones).
FOLDER_MEMORY = 1024
# A lease no lookup needed for this long is let go.
IDLE = 10.0
MAX_LEASES = 32
# Names kept in all leases together, at most: with the metaserver's limit per
# folder (2 MiB of them, each counted 64 bytes more), the memory a mount spends
# on leases stays within about 16 MiB.
MAX_NAMES = 200_000
# A folder refused (too many names) is not asked for again until this much later.
REFUSED_FOR = 60.0
# Leases end this much sooner here than on the metaserver.
MARGIN = 0.5
POLL_WAIT = 1.0
RETRY = 0.5


def _remember(memory: OrderedDict, folder: int, value) -> None:
    memory.pop(folder, None)
    memory[folder] = value
    while len(memory) > FOLDER_MEMORY:
        memory.popitem(last=False)


def _now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class Lease:
    number: int
    names: set[bytes]
    until: float
    # When the grant came: a poll sent after it renews it.
    granted: float
    used: float
    # Of an exclusive lease: the folder's attributes as this mount's changes left them.
    attr: Attr | None = None


class DirLeases:
    def __init__(self, meta: MetaLink, nursery: trio.Nursery):
        self.meta = meta
        self.nursery = nursery
        self.leases: dict[int, Lease] = {}
        # The metaserver run and the session the leases are from.
        self.instance = 0
        self.session = 0
        self.enabled = True
        # Folder -> (misses in a row, when the first of them was).
        self.misses: OrderedDict[int, tuple[int, float]] = OrderedDict()
        # Folder -> times its lease was recalled.
        self.recalls: OrderedDict[int, int] = OrderedDict()
        # Folder -> when it may be asked for again after a refusal.
        self.refused: OrderedDict[int, float] = OrderedDict()
        # Folder -> names this mount added while a grant for it was on its way.
        self.asking: dict[int, set[bytes]] = {}
        # Grants recalled before they arrived: they are not to be used.
        self.recalled_early: set[int] = set()
        # Folder -> this mount's changes to it in flight.
        self.changing: dict[int, int] = {}
        self.released: list[list[int]] = []
        self.polling = False
        # Lookups answered from a lease.
        self.answered = 0
        # Set by a mount that makes files ahead: leases are asked for
        # exclusive, and `settle` is awaited before any is let go of.
        self.settle: Callable[[], Awaitable[None]] | None = None
        meta.reconnected.append(self.reconnected)

    # ---- lookups -------------------------------------------------------------

    def exclusive(self, folder: int) -> Lease | None:
        """The exclusive lease on `folder`, while this mount may trust it."""
        lease = self.leases.get(folder)
        if (lease is None or lease.attr is None or self.meta.session != self.session
                or _now() >= lease.until):
            return None
        return lease

    def absent(self, folder: int, name: bytes) -> bool:
        """True if a lease on `folder` shows `name` is not there."""
        lease = self.leases.get(folder)
        if lease is None or name in lease.names or self.meta.session != self.session:
            return False
        now = _now()
        if now >= lease.until:
            return False
        lease.used = now
        self.answered += 1
        return True

    async def missed(self, folder: int) -> None:
        """A lookup in `folder` found nothing; after a few, lease the folder."""
        if (not self.enabled or folder in self.leases or folder in self.asking
                or self.changing.get(folder) or self.refused.get(folder, 0.0) > _now()):
            return
        now = _now()
        count, first = self.misses.pop(folder, (0, now))
        if now - first > MISS_WINDOW:
            count, first = 0, now
        count += 1
        if count < MISSES_BEFORE_LEASE << min(self.recalls.get(folder, 0), MAX_BACKOFF):
            _remember(self.misses, folder, (count, first))
            return
        self._make_room(MAX_LEASES - 1)
        await self._ask(folder)
        self._make_room(MAX_LEASES)

    def _make_room(self, leases: int) -> None:
        """Let go of the idlest leases until at most `leases` and MAX_NAMES are held."""
        while self.leases and (len(self.leases) > leases or sum(
                len(lease.names) for lease in self.leases.values()) > MAX_NAMES):
            self._let_go(min(self.leases, key=lambda ino: self.leases[ino].used))

    async def _ask(self, folder: int) -> None:
        session = self.meta.session
        self.asking[folder] = set()
        sent = _now()
        try:
            exclusive = {"exclusive": True} if self.settle is not None else {}
            reply = await self.meta.call("dir_lease", session=session, ino=folder, **exclusive)
        except DfsError as exc:
            if exc.errno == errno.ENOSYS:
                self.enabled = False   # a metaserver older than leases
            elif exc.errno in (errno.EFBIG, errno.EMFILE):
                _remember(self.refused, folder, _now() + REFUSED_FOR)
            log.debug("no directory lease", ino=folder, error=exc.message)
            return
        finally:
            added = self.asking.pop(folder)
        number = reply["number"]
        if number in self.recalled_early or session != self.meta.session:
            self.recalled_early.discard(number)
            return
        if reply["instance"] != self.instance or session != self.session:
            self._forget_all()
            self.instance, self.session = reply["instance"], session
        now = _now()
        attr = Attr.from_wire(reply["attr"]) if reply.get("exclusive") else None
        self.leases[folder] = Lease(number, set(reply["names"]) | added,
                                    sent + reply["lease"] - MARGIN, now, now, attr)
        self._start_polling()

    # ---- this mount's own changes -------------------------------------------

    def begin(self, folders) -> None:
        for folder in folders:
            self.changing[folder] = self.changing.get(folder, 0) + 1

    def end(self, folders) -> None:
        for folder in folders:
            left = self.changing.pop(folder) - 1
            if left:
                self.changing[folder] = left

    def adding(self, folder: int, name: bytes) -> None:
        """Before a change that may add `name` to `folder` is sent."""
        lease = self.leases.get(folder)
        if lease is not None:
            lease.names.add(name)
        pending = self.asking.get(folder)
        if pending is not None:
            pending.add(name)

    def changed(self, attr: Attr) -> None:
        """A change's reply brought a folder's attributes."""
        lease = self.leases.get(attr.ino)
        if lease is not None and lease.attr is not None and attr.ctime >= lease.attr.ctime:
            lease.attr = dataclasses.replace(attr)

    def removed(self, folder: int, name: bytes) -> None:
        """After a change that removed `name` from `folder`."""
        lease = self.leases.get(folder)
        if lease is not None:
            lease.names.discard(name)

    # ---- keeping leases --------------------------------------------------------

    def reconnected(self) -> None:
        """The connection to the metaserver was lost: let go of every lease
        (it may be another run now, which must not hear from this session
        while it holds any)."""
        for folder in list(self.leases):
            self._let_go(folder)
        self._start_polling()

    def _start_polling(self) -> None:
        if (self.leases or self.released) and not self.polling:
            self.polling = True
            self.nursery.start_soon(self._poll)

    def _let_go(self, folder: int) -> None:
        lease = self.leases.pop(folder)
        self.released.append([folder, lease.number])

    def _forget_all(self) -> None:
        """Drop every lease without releasing it: the metaserver no longer has them."""
        self.leases.clear()
        self.recalled_early.clear()
        self.released.clear()

    async def _poll(self) -> None:
        try:
            while self.leases or self.released:
                await self._poll_once()
        except Exception:
            # Never the mount's end: without polls, leases are only not used.
            log.error("directory lease poll failed", exc_info=True)
            self._forget_all()
        finally:
            self.polling = False

    async def _poll_once(self) -> None:
        if self.released and self.settle is not None:
            await self.settle()
        sent = _now()
        released, self.released = self.released, []
        try:
            reply = await self.meta.call("dir_poll", session=self.session, released=released,
                                         wait=POLL_WAIT)
        except DfsError as exc:
            if exc.errno == errno.ENOSYS:
                self.enabled = False
            log.warning("directory leases given up: the metaserver did not answer a poll",
                        leases=len(self.leases), error=exc.message)
            # Released where it still knows them; if not, they run out there.
            if exc.errno == errno.ESTALE:
                self._forget_all()
            else:
                for folder in list(self.leases):
                    self._let_go(folder)
                self.released += released
            await trio.sleep(RETRY)
            return
        if reply["instance"] != self.instance or self.session != self.meta.session:
            self._forget_all()
            return
        for folder, number in reply["recall"]:
            lease = self.leases.get(folder)
            if lease is not None and lease.number == number:
                del self.leases[folder]
                _remember(self.recalls, folder, self.recalls.pop(folder, 0) + 1)
            elif folder in self.asking:
                self.recalled_early.add(number)
            self.released.append([folder, number])
        held = set(reply["held"])
        for folder, lease in list(self.leases.items()):
            if lease.granted > sent:
                continue
            if lease.number in held:
                lease.until = sent + reply["lease"] - MARGIN
            else:
                del self.leases[folder]
        idle = _now() - IDLE
        for folder in [ino for ino, lease in self.leases.items() if lease.used < idle]:
            self._let_go(folder)
