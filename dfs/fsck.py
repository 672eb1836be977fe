"""`dfs fsck`: check the metadata against the chunk servers through the
metaserver, a page of chunks at a time, with a progress bar on stderr.

The metaserver does the checking (it knows where every replica should be and
at which version, and it can repair under the same locks writers take); this
module pages through it, draws the progress and writes the report.
"""

import sys
from collections import Counter
from dataclasses import dataclass, field

import trio

from .config import ClusterRef
from .ops import META
from .progress import Progress
from .rpc import Client

PAGE = 64
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


async def _check(cluster: ClusterRef, verify: bool, repair: bool, progress_stream,
                 force_progress: bool) -> Report:
    client = Client(cluster.meta, cluster.secret, META, retry_for=30.0)
    report = Report()
    try:
        total = (await client.call("status"))["chunks"]
        progress = Progress("fsck", total, progress_stream, force_progress)

        def show():
            progress.show(report.chunks, f"{report.chunks}/{total} chunks, "
                                         f"{len(report.problems)} problems")

        after = 0
        while True:
            reply = await client.call("fsck_chunks", after=after, limit=PAGE, verify=verify,
                                      repair=repair)
            report.chunks += reply["checked"]
            report.problems += reply["problems"]
            show()
            after = reply["next"]
            if not after:
                break
        report.problems += (await client.call("fsck_servers", repair=repair))["problems"]
        show()
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
