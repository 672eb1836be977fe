"""What every suite gives the runner, and what the runner gives every suite."""

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import procs
from benchmarks.scale import Scale
from benchmarks.targets import Target


@dataclass
class Context:
    scale: Scale
    artifacts: Path         # what is kept: results, plots
    work: Path              # what is thrown away: mounts, sockets, data
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        """Progress for the person watching: one line on stderr with the elapsed time."""
        print(f"[{time.monotonic() - self.started:6.0f}s] {message}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        """A caveat that belongs in the written results (say, a page cache not dropped)."""
        if message not in self.notes:
            self.notes.append(message)
            self.say(f"note: {message}")

    def drop_caches(self) -> None:
        """Empty the page cache before a cold read; the results say so when it cannot."""
        if not procs.drop_caches():
            self.note("the page cache could not be dropped (not root?): cold reads are warm")


@dataclass
class Outcome:
    figures: list[tuple[str, str, float]]
    detail: dict | None = None


class Suite:
    """Cases of one kind of benchmark; each case runs on one target at a time."""

    name = ""
    tools: tuple[str, ...] = ()

    def cases(self) -> list[str]:
        raise NotImplementedError

    def run(self, case: str, target: Target, root: Path, ctx: Context) -> Outcome:
        raise NotImplementedError

    def finish(self, details: dict[str, list[dict]], ctx: Context) -> dict:
        """After every case ran: draw or summarise the details (target -> per round)."""
        return {}
