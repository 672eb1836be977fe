"""Attachment epochs: which mount may still change a single-node volume.

A volume published to one node at a time (ReadWriteOnce) must never have two
writers, yet a node cut off from Kubernetes may go on writing through a mount
that still reaches the cluster while the volume is published elsewhere. So the
CSI controller moves the volume directory's epoch (`fence`) whenever the
volume is published to a node or unpublished from one, and the node mounts
the volume with the epoch it was published under. From the moment an epoch
moves, a session bound to an older one is refused every change (EROFS), and
the chunks it holds write leases on move to a new version, so the writes it
already has on their way are refused by the chunk servers (ESTALE).

The epochs live in LMDB (`epochs`) and, for speed, here; a session's binding
lives in its record and here. Which chunks the bound sessions lease is known
in memory only: after a restart, while leases granted before it may still be
used, an epoch that restored sessions are bound to cannot move (EAGAIN).

After a restore from a backup (restore.py) the epochs moved since the backup
are lost, yet mounts still hold them. Such an epoch lies between the restored
one and the `floor` the restored database hands out epochs from: a mount
presenting one has it adopted (the directory moves to it, fencing out older
ones), and no epoch handed out later can equal it.
"""

import errno
import time
from contextlib import contextmanager
from dataclasses import dataclass

from dfs.errors import DfsError

# A directory's record of leased chunks is pruned of lapsed leases each time
# it doubles from this size on.
PRUNE_AT = 1024


@dataclass(frozen=True)
class Binding:
    ino: int
    epoch: int


class Fences:
    def __init__(self):
        self.epochs: dict[int, int] = {}
        self.bindings: dict[int, Binding] = {}
        # Directory -> chunk -> until when a session bound to it may write.
        self.writing: dict[int, dict[int, float]] = {}
        # Directories that sessions restored at the start are bound to.
        self.restored: set[int] = set()
        # Directory -> changes by sessions bound to it that are running now.
        self.running: dict[int, int] = {}
        # Epochs handed out from now on are at least this.
        self.floor = 0

    def load(self, epochs, bindings: dict[int, Binding], floor: int) -> None:
        self.epochs = dict(epochs)
        self.bindings = dict(bindings)
        self.restored = {binding.ino for binding in bindings.values()}
        self.floor = floor

    def current(self, ino: int) -> int:
        return self.epochs.get(ino, 0)

    def next_epoch(self, current: int) -> int:
        return max(current + 1, self.floor)

    def lost(self, binding: Binding) -> bool:
        """Whether `binding` names an epoch handed out after the backup the
        metadata was restored from: newer than the directory's, older than
        any handed out since."""
        return self.current(binding.ino) < binding.epoch < self.floor

    def bind(self, sid: int, binding: Binding) -> None:
        self.bindings[sid] = binding

    def unbind(self, sid: int) -> None:
        self.bindings.pop(sid, None)

    def check_binding(self, binding: Binding) -> None:
        current = self.current(binding.ino)
        if binding.epoch != current:
            raise DfsError(errno.EROFS,
                           f"directory {binding.ino} is attached under epoch {current}, not "
                           f"{binding.epoch}: it was published to another node, so this "
                           "mount may no longer change it")

    @contextmanager
    def changing(self, sid: int | None):
        """Around a change by session `sid`: refused if its fence moved on,
        counted while it runs so that `fence` can wait for it to end."""
        binding = self.bindings.get(sid) if sid is not None else None
        if binding is None:
            yield
            return
        self.check_binding(binding)
        self.running[binding.ino] = self.running.get(binding.ino, 0) + 1
        try:
            yield
        finally:
            left = self.running.pop(binding.ino) - 1
            if left:
                self.running[binding.ino] = left

    def busy(self, ino: int) -> bool:
        return ino in self.running

    def leased(self, sid: int, chunk_id: int, until: float) -> None:
        """Session `sid` was just granted a write lease on `chunk_id`."""
        binding = self.bindings.get(sid)
        if binding is None:
            return
        leases = self.writing.setdefault(binding.ino, {})
        leases[chunk_id] = until
        if len(leases) >= PRUNE_AT and len(leases) & (len(leases) - 1) == 0:
            now = time.time()
            for chunk in [c for c, t in leases.items() if t <= now]:
                del leases[chunk]

    def move(self, ino: int, epoch: int) -> None:
        self.epochs[ino] = max(epoch, self.current(ino))

    def leased_chunks(self, ino: int) -> list[int]:
        """The chunks whose write leases, granted to sessions bound to `ino`,
        may still be in use; forgotten here once returned."""
        now = time.time()
        return sorted(chunk for chunk, until in self.writing.pop(ino, {}).items()
                      if until > now)
