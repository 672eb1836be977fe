"""A one-line progress bar on stderr for the `dfs` command's long operations."""

import sys
import time

BAR_WIDTH = 30


class Progress:
    """Redrawn in place, and only when the stream is a terminal or `force`d,
    so that logs and pipes stay clean."""

    def __init__(self, label: str, total: int, stream=sys.stderr, force: bool = False):
        self.label = label
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = force or stream.isatty()
        self.started = time.monotonic()

    def show(self, done: int, detail: str) -> None:
        if not self.enabled:
            return
        share = min(done / self.total, 1.0)
        filled = int(share * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {share:4.0%} {detail}, "
                          f"{time.monotonic() - self.started:.0f}s")
        self.stream.flush()

    def end(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
