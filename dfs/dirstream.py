"""An open directory of a mount, and the entries it has fetched but not listed yet.

The kernel lists a folder in requests as large as the reader's buffer (4 to
32 KiB for most: a few dozen to a few hundred entries with their attributes),
while the mount fetches entries from the metaserver a page of hundreds at a
time. What one request leaves of a page is kept for the next request of the
same handle, so that each page is fetched once rather than once per request:
if that request continues where the last one stopped, comes within
KEEP_SECONDS, and nothing was changed through this mount meanwhile (whose
kernel would otherwise be handed back a name it just removed, or attributes
it just changed).
"""

import time
from dataclasses import dataclass, field

# How long the rest of a page is kept for the next request of its handle.
KEEP_SECONDS = 0.5


@dataclass
class DirStream:
    # The folder's inode, as the metaserver and as the kernel number it.
    ino: int
    kernel_ino: int
    # Entries (name, attributes, offset after it) of the last page fetched
    # that the kernel has not taken, the offset they start at, whether the
    # page ended the folder, when it was fetched, and the mount's count of
    # changes then.
    left: list = field(default_factory=list)
    at: int = -1
    eof: bool = False
    fetched: float = 0.0
    changes: int = 0

    def keep(self, entries: list, at: int, eof: bool, fetched: float, changes: int) -> None:
        self.left, self.at, self.eof, self.fetched, self.changes = (
            entries, at, eof, fetched, changes)

    def take(self, at: int, changes: int) -> tuple[list, bool, float] | None:
        """The entries kept from `at` on, whether they end the folder and
        when they were fetched; None if what is kept starts elsewhere, is
        too old, or the mount has changed something since (`changes`)."""
        kept = self.left, self.eof, self.fetched
        usable = (at == self.at and changes == self.changes
                  and time.monotonic() - self.fetched <= KEEP_SECONDS)
        self.keep([], -1, False, 0.0, 0)
        return kept if usable else None
