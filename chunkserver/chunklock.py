"""A per-chunk lock with shared and exclusive holders, granted in arrival order.

Reads and syncs change nothing a reader could see half done, so any number of
them may hold a chunk at once; writes, truncates, version changes and removal
hold it alone. Waiters are served first come, first served: a shared request
that arrives behind a waiting exclusive one waits too, so neither a stream of
reads nor a stream of writes can starve the other.
"""

from collections import deque

import trio


class ChunkLock:
    __slots__ = ("readers", "writer", "_waiting")

    def __init__(self):
        self.readers = 0
        self.writer = False
        # [task, exclusive] in arrival order.
        self._waiting: deque[list] = deque()

    @property
    def busy(self) -> bool:
        return self.writer or self.readers > 0 or bool(self._waiting)

    def _fits(self, exclusive: bool) -> bool:
        return not self.writer and not (exclusive and self.readers)

    def _take(self, exclusive: bool) -> None:
        if exclusive:
            self.writer = True
        else:
            self.readers += 1

    async def acquire(self, exclusive: bool) -> None:
        if not self._waiting and self._fits(exclusive):
            self._take(exclusive)
            return
        waiter = [trio.lowlevel.current_task(), exclusive]
        self._waiting.append(waiter)

        def abort(_):
            self._waiting.remove(waiter)
            # A cancelled exclusive waiter may have been all that held back
            # the shared ones behind it.
            self._grant()
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def release(self, exclusive: bool) -> None:
        if exclusive:
            self.writer = False
        else:
            self.readers -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._fits(self._waiting[0][1]):
            task, exclusive = self._waiting.popleft()
            self._take(exclusive)
            trio.lowlevel.reschedule(task)
