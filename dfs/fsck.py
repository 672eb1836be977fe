"""`dfs fsck`: check the metadata against the chunk servers through the
metaserver, a page of chunks at a time, with a progress bar on stderr.

The metaserver does the checking (it knows where every replica should be and
at which version, and it can repair under the same locks writers take); this
module pages through it, draws the progress and writes the report.
"""

import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import trio

from .config import ClusterRef
from .ops import META
from .rpc import Client

PAGE = 64
BAR_WIDTH = 30
# Kinds that mean data cannot be read at all.
FATAL = {"lost"}


@dataclass
class Report:
    chunks: int = 0
    problems: list = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        return Counter(p["kind"] for p in self.problems)

    @property
    def repaired(self) -> int:
        return sum(1 for p in self.problems if p["repaired"])

    @property
    def unrepaired(self) -> int:
        return len(self.problems) - self.repaired

    def to_wire(self) -> dict:
        return {"chunks_checked": self.chunks, "problems": self.problems,
                "counts": dict(self.counts), "repaired": self.repaired,
                "healthy": not self.problems}


class Progress:
    """A one-line bar on stderr, redrawn in place (only when stderr is a terminal
    or `force`d, so logs stay clean)."""

    def __init__(self, total: int, stream=sys.stderr, force: bool = False):
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = force or stream.isatty()
        self.started = time.monotonic()

    def show(self, done: int, problems: int) -> None:
        if not self.enabled:
            return
        share = min(done / self.total, 1.0)
        filled = int(share * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\rfsck [{bar}] {share:4.0%} {done}/{self.total} chunks, "
                          f"{problems} problems, {time.monotonic() - self.started:.0f}s")
        self.stream.flush()

    def end(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


async def _check(cluster: ClusterRef, verify: bool, repair: bool, progress_stream,
                 force_progress: bool) -> Report:
    client = Client(cluster.meta, cluster.secret, META, retry_for=30.0)
    report = Report()
    try:
        total = (await client.call("status"))["chunks"]
        progress = Progress(total, progress_stream, force_progress)
        after = 0
        while True:
            reply = await client.call("fsck_chunks", after=after, limit=PAGE, verify=verify,
                                      repair=repair)
            report.chunks += reply["checked"]
            report.problems += reply["problems"]
            progress.show(report.chunks, len(report.problems))
            after = reply["next"]
            if not after:
                break
        report.problems += (await client.call("fsck_servers", repair=repair))["problems"]
        progress.show(report.chunks, len(report.problems))
        progress.end()
    finally:
        await client.aclose()
    return report


def run(cluster: ClusterRef, verify: bool = False, repair: bool = False,
        progress_stream=sys.stderr, force_progress: bool = False) -> Report:
    return trio.run(_check, cluster, verify, repair, progress_stream, force_progress)


def format_report(report: Report, repair: bool) -> str:
    lines = [f"checked {report.chunks} chunks"]
    for p in report.problems:
        where = f" on chunk server {p['csid']}" if p["csid"] else ""
        state = " [repaired]" if p["repaired"] else ""
        lines.append(f"  chunk {p['chunk']}: {p['kind']}{where}: {p['detail']}{state}")
    if not report.problems:
        lines.append("healthy: no problems found")
    else:
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(report.counts.items()))
        lines.append(f"problems: {summary}")
        if repair:
            lines.append(f"repaired {report.repaired} of {len(report.problems)}; "
                         "under-replicated chunks are restored by re-replication")
        else:
            lines.append("run with --repair to fix what can be fixed")
    return "\n".join(lines)


def exit_code(report: Report) -> int:
    """0 healthy (or all fixed), 1 problems remain, 2 data lost."""
    if any(p["kind"] in FATAL for p in report.problems):
        return 2
    return 1 if report.unrepaired else 0
