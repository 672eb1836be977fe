"""fio: sequential and random I/O from the job files in benchmarks/fio/."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from benchmarks import procs
from benchmarks.suite import Context, Outcome, Suite
from benchmarks.targets import Target

JOB_DIR = Path(__file__).parent / "fio"
GIB = 1 << 30


@dataclass(frozen=True)
class Job:
    name: str
    direction: str          # the section of fio's JSON that holds the figures
    rate: str               # "bw" (MB/s) or "iops"
    cold: bool = False      # drop the page cache after laying out the file
    stale: str = ""         # glob of files to remove first, so a write starts from nothing

    @property
    def file(self) -> Path:
        return JOB_DIR / f"{self.name}.fio"


# rand-read lays out rand.dat and rand-write then overwrites it: random writes land on
# allocated data, as a database's do.
JOBS = [Job("seq-write", "write", "bw", stale="seq.dat"),
        Job("seq-read", "read", "bw", cold=True),
        Job("rand-read", "read", "iops", cold=True),
        Job("rand-write", "write", "iops"),
        Job("par-write", "write", "bw", stale="par-write.*")]


class FioSuite(Suite):
    name = "fio"
    tools = ("fio",)

    def cases(self) -> list[str]:
        return [job.name for job in JOBS]

    def run(self, case: str, target: Target, root: Path, ctx: Context) -> Outcome:
        job = next(j for j in JOBS if j.name == case)
        folder = root / "fio"
        folder.mkdir(exist_ok=True)
        for stale in folder.glob(job.stale) if job.stale else ():
            stale.unlink()
        env = {**os.environ, "DIR": str(folder), "SEQ_SIZE": ctx.scale.seq_size,
               "PAR_SIZE": ctx.scale.par_size, "RAND_SIZE": ctx.scale.rand_size,
               "RUNTIME": str(ctx.scale.fio_runtime)}
        if job.cold:
            procs.run(["fio", "--create_only=1", str(job.file)], timeout=900, env=env)
            ctx.drop_caches()
        pids = [pid for group in target.processes().values() for pid in group]
        cpu_before = procs.cpu_seconds(pids)
        done = procs.run(["fio", "--output-format=json", str(job.file)], timeout=900, env=env)
        cpu = procs.cpu_seconds(pids) - cpu_before
        try:
            # fio may print warnings before its JSON.
            report = json.loads(done.stdout[done.stdout.index("{"):])
        except ValueError:
            raise procs.BenchError(f"fio printed no JSON report:\n{done.stdout[-1500:]}") from None
        return Outcome(self._figures(job, report, cpu, bool(pids)))

    @staticmethod
    def _figures(job: Job, report: dict, cpu: float, has_processes: bool) -> list:
        sections = [j[job.direction] for j in report["jobs"]]
        if job.rate == "bw":
            rate = ("MB/s", sum(s["bw_bytes"] for s in sections) / 1e6)
        else:
            rate = ("IOPS", sum(s["iops"] for s in sections))
        percentiles = sections[0]["clat_ns"].get("percentile", {})
        figures = [(job.name, *rate),
                   (job.name, "p50 ms", percentiles.get("50.000000", 0) / 1e6),
                   (job.name, "p99 ms", percentiles.get("99.000000", 0) / 1e6)]
        written = sum(s["io_bytes"] for s in sections) if job.direction == "write" else 0
        if written and has_processes:
            figures.append((job.name, "CPU s/GiB", cpu / (written / GIB)))
        return figures
