"""Where a chunk server runs a replica's sync: on the event loop or in a
worker thread.

A sync of a few small writes on a disk that flushes quickly is over sooner
than a hand-off to a worker thread would be: a wake-up on each side and the
GIL changing hands while the event loop works cost about 200 µs of CPU per
sync on a 2-core VM, more than the fdatasync itself and the largest single
cost of a database's 4 KiB write and fsync. So a small sync runs on the event
loop while the disk proves quick, that is while the running average of those
syncs stays under INLINE_SYNC_SECONDS. A slower disk (one that spins) has its
syncs handed to threads after its first few, and is tried again once every
RETRY_SECONDS, so one such sync a second may hold up the event loop.

The price is paid by the server's other requests, which wait for a small
sync instead of running beside it. Measured with a mount writing 4 KiB and
fdatasyncing in a loop while another client read 64 KiB blocks from the same
chunk servers: the writer synced 23-38% more often, and on the server busiest
with its syncs the reads' p50 went from 0.28-0.31 to 0.36-0.40 ms and their
p99 from 0.65-0.92 to 1.08-1.39 ms. A database's commits are what waits on
syncs, so they are favoured.

Syncs on the event loop that arrive together run as one group (see
service.py), timed together: the average is per sync.

Only syncs run on the event loop are timed: in a thread the time would
include waiting for the GIL, which says nothing about the disk.

The server logs when its disk turns slow by this measure and when it turns
quick again, with the average and how many syncs ran on the event loop in
how many groups: an operator's view of the disk's flushes.
"""

from dataclasses import dataclass

# Small reads and writes run on the event loop too (service.INLINE_IO); a sync
# after no more than this many bytes of writes flushes about as much.
INLINE_SYNC_BYTES = 128 * 1024
INLINE_SYNC_SECONDS = 0.002
# Weight of the newest sync in the running average.
AVERAGE_WEIGHT = 0.1
RETRY_SECONDS = 1.0


@dataclass
class SyncPolicy:
    average: float | None = None
    threads_until: float = 0.0
    # Syncs run on the event loop, and the groups they ran in.
    synced: int = 0
    groups: int = 0

    @property
    def slow(self) -> bool:
        """Whether the running average says the disk flushes slowly."""
        return self.average is not None and self.average > INLINE_SYNC_SECONDS

    def inline(self, unsynced: int | None, now: float) -> bool:
        """Whether to run a sync after `unsynced` bytes of writes (None:
        unknown) on the event loop."""
        return (unsynced is not None and unsynced <= INLINE_SYNC_BYTES
                and now >= self.threads_until)

    def took(self, seconds: float, now: float, count: int = 1) -> None:
        """Record how long a group of `count` syncs run on the event loop
        took, together."""
        self.synced += count
        self.groups += 1
        seconds /= count
        if self.average is None:
            self.average = seconds
        else:
            self.average += AVERAGE_WEIGHT * (seconds - self.average)
        if self.slow:
            self.threads_until = now + RETRY_SECONDS
