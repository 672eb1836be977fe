"""sysbench fileio: sequential write, cold sequential read and random read/write."""

import re
import shutil
from pathlib import Path

from benchmarks import procs
from benchmarks.suite import Context, Outcome, Suite
from benchmarks.targets import Target

FILES = 4
MODES = ("seqwr", "seqrd", "rndrw")


def _number(label: str, text: str) -> float:
    found = re.search(rf"{re.escape(label)}\s+([\d.]+)", text)
    if not found:
        raise procs.BenchError(f"sysbench fileio printed no '{label}':\n{text[-1500:]}")
    return float(found.group(1))


class FileioSuite(Suite):
    """The three modes form one case: they share the files one `prepare` lays out."""

    name = "sysbench"
    tools = ("sysbench",)

    def cases(self) -> list[str]:
        return ["fileio"]

    def run(self, case: str, target: Target, root: Path, ctx: Context) -> Outcome:
        folder = root / "fileio"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        base = ["sysbench", "fileio", f"--file-total-size={ctx.scale.fileio_size}",
                f"--file-num={FILES}"]
        procs.run([*base, "prepare"], timeout=900, cwd=folder)
        figures = []
        for mode in MODES:
            if mode == "seqrd":
                ctx.drop_caches()
            seconds = ctx.scale.fileio_seconds
            out = procs.run([*base, f"--file-test-mode={mode}", f"--time={seconds}", "run"],
                            timeout=seconds + 600, cwd=folder).stdout
            if mode == "seqwr":
                figures.append((mode, "MB/s", _number("written, MiB/s:", out) * 1.048576))
            elif mode == "seqrd":
                figures.append((mode, "MB/s", _number("read, MiB/s:", out) * 1.048576))
            else:
                figures.append((mode, "IOPS", _number("reads/s:", out) + _number("writes/s:", out)))
            figures.append((mode, "p95 ms", _number("95th percentile:", out)))
        procs.run([*base, "cleanup"], timeout=300, cwd=folder)
        folder.rmdir()
        return Outcome(figures)
