"""The scrubber: reads every replica in the background, coldest first, and
verifies its CRCs, so corruption in data nobody reads is still found and
reported while other replicas can repair it.

It reads through the service like a client (same lock, same verification and
reporting), in 1 MiB pieces paced to the configured rate.
"""

import errno

import trio

from dfs import logs
from dfs.errors import DfsError

from .service import ChunkService

log = logs.get_logger("chunkserver")

PIECE = 1024 * 1024
# The shortest time from the start of one pass to the next, so a store of a
# few small chunks is not re-read in a busy loop.
MIN_PASS_SECONDS = 1.0


class Scrubber:
    def __init__(self, service: ChunkService, rate_mib: float):
        self.service = service
        self.seconds_per_byte = 1.0 / (rate_mib * 1024 * 1024)
        # Replicas found bad (chunk, version): not read again until repaired.
        self._bad: set[tuple[int, int]] = set()

    async def run(self) -> None:
        while True:
            started = trio.current_time()
            for chunk in self._coldest_first():
                await self._scrub(chunk)
            await trio.sleep(max(0.0, MIN_PASS_SECONDS - (trio.current_time() - started)))

    def _coldest_first(self) -> list[int]:
        service = self.service
        self._bad &= set(service.versions.items())
        chunks = [c for c, v in service.versions.items() if (c, v) not in self._bad]
        return sorted(chunks, key=lambda c: service.last_used.get(c, 0.0))

    async def _scrub(self, chunk: int) -> None:
        version = self.service.versions.get(chunk)
        offset = 0
        while True:
            try:
                length = await self.service.scrub(chunk, offset, PIECE)
            except DfsError as exc:
                if exc.errno == errno.EIO:
                    self._bad.add((chunk, version))
                    log.error("scrub found a bad replica", chunk=chunk, version=version,
                              error=exc.message)
                elif exc.errno != errno.ENOENT:
                    log.warning("scrub could not read a replica", chunk=chunk,
                                error=exc.message)
                return
            if length is None:
                return
            await trio.sleep(min(PIECE, max(0, length - offset)) * self.seconds_per_byte)
            offset += PIECE
            if offset >= length:
                return
