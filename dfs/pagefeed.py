"""Giving the kernel's page cache the rest of a block a random read fetched.

A read out of sequence fetches the whole 64 KiB block around it (the chunk
server reads and verifies whole blocks anyway), but the kernel asked for one
page and caches only that. The rest of the block goes to its page cache too,
through FUSE's notify_store, so the reads that follow nearby are answered by
the kernel without a request reaching the mount.

A page stored there must never be older than the file, so:
- Only while no handle of this mount may write the file. The kernel holds a
  page it writes locked until the mount answers the write, so a store racing
  the write would wait for it and then put the old bytes back.
- Only if the file's data did not change on this mount since the fetch began
  (the OpenFile's generation: writes, truncation, a change seen at open), and
  only within the size the mount knows.
- An open and a truncation are answered only once every store of the file
  under way has landed: the kernel drops or cuts the file's pages after the
  reply, and no older page may land after that. This is also how other
  mounts' changes stay visible at the next open (close-to-open).
Stores run in threads, never on the trio thread: a store waits for pages that
reads of the kernel hold locked, and those reads are answered by the trio thread.
The threads are the feed's own and take stores from a queue, and the trio thread
hears of a landed store only when an open or a truncation waits for it: a trio
task and a worker-thread hand-off per store, and a wake-up of the trio thread
when each landed, put that work in front of the next read's request.
"""

import queue
import threading

import pyfuse3
import trio

from . import logs

log = logs.get_logger("client")

PAGE = 4096
# Threads storing at a time; more would only queue on the same locks.
STORE_THREADS = 2
# Stores accepted and not landed yet, at most (each holds its block): past
# this, offers are declined, as the pages are only a guess.
MAX_UNDER_WAY = 64


def page_floor(pos: int) -> int:
    return pos - pos % PAGE


def page_ceil(pos: int) -> int:
    return page_floor(pos + PAGE - 1)


def store_in_kernel(ino: int, pieces: list[tuple[int, bytes]]) -> None:
    for offset, data in pieces:
        pyfuse3.notify_store(ino, offset, data)


class PageFeed:
    def __init__(self, store=store_in_kernel):
        # Blocking; runs in the feed's threads.
        self._store_pieces = store
        self._token = trio.lowlevel.current_trio_token()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        # Guards the counts and waiters below, shared with the threads.
        self._lock = threading.Lock()
        # Inode -> stores accepted and not landed yet.
        self._under_way: dict[int, int] = {}
        self._landed: dict[int, trio.Event] = {}
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name="dfs-pagefeed", daemon=True)
                         for _ in range(STORE_THREADS)]
        for thread in self._threads:
            thread.start()

    def offer(self, ino: int, pieces: list[tuple[int, bytes]], current) -> None:
        """Store (offset, data) pieces of inode `ino` in the background;
        `current()` says whether they still hold what the file holds, and is
        asked now and again right before the store."""
        if self._closed or not pieces or not current():
            return
        with self._lock:
            if sum(self._under_way.values()) >= MAX_UNDER_WAY:
                return
            self._under_way[ino] = self._under_way.get(ino, 0) + 1
        self._jobs.put((ino, pieces, current))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            ino, pieces, current = job
            try:
                if not self._closed and current():
                    self._store_pieces(ino, pieces)
            except OSError as exc:
                # The kernel may have forgotten the inode; the pages are only a guess.
                log.debug("page cache store failed", ino=ino, error=str(exc))
            except Exception:
                log.error("page cache store failed", exc_info=True, ino=ino)
            finally:
                self._finished(ino)

    def _finished(self, ino: int) -> None:
        with self._lock:
            left = self._under_way.pop(ino) - 1
            if left:
                self._under_way[ino] = left
                return
            landed = self._landed.pop(ino, None)
        if landed is not None:
            try:
                self._token.run_sync_soon(landed.set)
            except trio.RunFinishedError:
                pass

    async def settle(self, ino: int) -> None:
        """Return once no store of `ino` is under way."""
        while True:
            with self._lock:
                if ino not in self._under_way:
                    return
                landed = self._landed.setdefault(ino, trio.Event())
            await landed.wait()

    async def close(self) -> None:
        """Accept no more stores, wait for those under way (before the FUSE
        session they write to is closed) and stop the threads."""
        self._closed = True
        with self._lock:
            inodes = list(self._under_way)
        for ino in inodes:
            await self.settle(ino)
        for _ in self._threads:
            self._jobs.put(None)
