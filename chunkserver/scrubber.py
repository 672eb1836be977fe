"""The scrubber: reads every replica in the background, coldest first, and
verifies its CRCs, so corruption in data nobody reads is still found and
reported while other replicas can repair it.

It reads through the service like a client (same lock, same verification and
reporting), in 1 MiB pieces paced to the configured rate. A replica is
verified again only once `every` seconds have passed since it last was, so a
store that takes less than that to read is read once per period, not over
and over.

When each replica was last verified is kept in the data folder (STATE_FILE,
written every SAVE_SECONDS and at a clean stop), so a restart picks up where
the pass was: a server restarted more often than a pass takes would
otherwise read the same replicas first every time and never reach the rest.
"""

import errno
import math
import time
from pathlib import Path

import msgpack
import trio

from dfs import logs
from dfs.durable import replace_file
from dfs.errors import DfsError

from .service import ChunkService

log = logs.get_logger("chunkserver")

PIECE = 1024 * 1024
# Opening a replica and reading its checksums costs about as much as reading
# this much data, so a store of many small replicas is paced by their number,
# not only by their few bytes.
SMALLEST_PIECE = 256 * 1024
# The shortest time from the start of one look for due replicas to the next;
# on a large store longer, so that looking costs at most about 1% of a core.
MIN_PASS_SECONDS = 1.0
LOOKS_PER_CPU_SECOND = 100
STATE_FILE = "scrub.state"
# A crash loses at most this much of the record; those replicas are read again.
SAVE_SECONDS = 60.0


class Scrubber:
    def __init__(self, service: ChunkService, rate_mib: float, every: float, data_dir: Path):
        self.service = service
        self.seconds_per_byte = 1.0 / (rate_mib * 1024 * 1024)
        self.every = every
        self.state_path = Path(data_dir) / STATE_FILE
        # When each replica was last verified (unix seconds).
        self._verified: dict[int, float] = _load(self.state_path)
        self._saved = dict(self._verified)
        self._saved_at = time.monotonic()
        # Replicas found bad (chunk, version): not read again until repaired.
        self._bad: set[tuple[int, int]] = set()
        self.verified_replicas = 0

    async def run(self) -> None:
        try:
            while True:
                started = trio.current_time()
                due = self._due(time.time())
                looked = trio.current_time() - started
                for chunk in due:
                    await self._scrub(chunk)
                    if time.monotonic() - self._saved_at >= SAVE_SECONDS:
                        await trio.to_thread.run_sync(self._save)
                pause = max(MIN_PASS_SECONDS, looked * LOOKS_PER_CPU_SECOND)
                await trio.sleep(max(0.0, pause - (trio.current_time() - started)))
        finally:
            self._save()

    def _save(self) -> None:
        self._saved_at = time.monotonic()
        if self._verified == self._saved:
            return
        verified = dict(self._verified)
        try:
            replace_file(self.state_path, msgpack.packb(verified))
        except OSError as exc:
            log.warning("cannot record what the scrubber verified", path=str(self.state_path),
                        error=str(exc))
            return
        self._saved = verified

    def _due(self, now: float) -> list[int]:
        """Replicas not verified within `every`, never verified first, then coldest first."""
        service = self.service
        self._bad &= set(service.versions.items())
        verified = self._verified = {c: at for c, at in self._verified.items()
                                     if c in service.versions}
        cutoff = now - self.every
        chunks = [c for c, v in service.versions.items()
                  if verified.get(c, -math.inf) <= cutoff and (c, v) not in self._bad]
        return sorted(chunks, key=lambda c: (c in verified, service.last_used.get(c, 0.0)))

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
            piece = min(PIECE, max(0, length - offset))
            await trio.sleep(max(piece, SMALLEST_PIECE) * self.seconds_per_byte)
            offset += PIECE
            if offset >= length:
                self._verified[chunk] = time.time()
                self.verified_replicas += 1
                return


def _load(path: Path) -> dict[int, float]:
    """What an earlier run verified when; nothing if there is no readable record."""
    try:
        loaded = msgpack.unpackb(path.read_bytes(), strict_map_key=False)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, msgpack.UnpackException) as exc:
        log.warning("ignoring an unreadable scrubber record", path=str(path), error=str(exc))
        return {}
    if not isinstance(loaded, dict) or not all(
            isinstance(c, int) and isinstance(at, (int, float)) for c, at in loaded.items()):
        log.warning("ignoring an unreadable scrubber record", path=str(path))
        return {}
    return {c: float(at) for c, at in loaded.items()}
