"""memory: the peak resident memory of each of a filesystem's processes while it writes
one file and reads it back cold, for each size in `mem_sizes`, so the table shows
whether memory grows with the size of the file (it must not)."""

import os
from pathlib import Path

from benchmarks import procs
from benchmarks.fio_suite import JOB_DIR
from benchmarks.suite import Context, Outcome, Suite
from benchmarks.targets import Target

# A process role's peak may grow by this much from the smallest file to the largest
# and still count as bounded: allocator noise, not data held.
GROWTH_ALLOWANCE = 1.25
GROWTH_SLACK_MIB = 16.0


def parse_sizes(sizes: str) -> list[str]:
    return [size.strip() for size in sizes.split(",") if size.strip()]


def metric(role: str) -> str:
    return f"{role} peak MiB"


class MemorySuite(Suite):
    """One case: every size in turn, each with the peaks of every role reset first."""

    name = "memory"
    tools = ("fio",)

    def cases(self) -> list[str]:
        return ["sizes"]

    def run(self, case: str, target: Target, root: Path, ctx: Context) -> Outcome:
        folder = root / "memory"
        folder.mkdir(exist_ok=True)
        roles = target.processes()
        if not roles:
            # A plain folder has no processes of its own to watch.
            return Outcome([])
        figures = []
        for size in parse_sizes(ctx.scale.mem_sizes):
            for pids in roles.values():
                for pid in pids:
                    procs.reset_peak_rss(pid)
            env = {**os.environ, "DIR": str(folder), "SEQ_SIZE": size}
            for job in ("seq-write", "seq-read"):
                if job == "seq-read":
                    ctx.drop_caches()
                procs.run(["fio", str(JOB_DIR / f"{job}.fio")], timeout=1800, env=env)
            for role, pids in roles.items():
                figures.append((f"{size} file", metric(role),
                                max(procs.peak_rss_mib(pid) for pid in pids)))
            (folder / "seq.dat").unlink()
        return Outcome(figures)


def memory_checks(medians: dict, subject: str, sizes: str,
                  bounds: dict[str, float]) -> list[tuple[str, str, float]]:
    """Per role of the subject, whether its peak with the largest file is bounded.

    A role with a stated bound (`bounds`, MiB by role) is judged by it: that is the
    promise, and its peak with the largest file must keep it. A role without one is
    judged by growth, its peak with the largest file against the next largest (not
    the smallest: a small file may end before the write pipeline and the read-ahead
    are full, and a bounded process grows until they are). Growth alone misjudges a
    process that fills its pipeline further with one file than with another, as the
    chunk servers do from run to run, hence the stated bounds."""
    names = parse_sizes(sizes)
    if len(names) < 2:
        return []
    first, last = f"{names[-2]} file", f"{names[-1]} file"
    checks = []
    for (suite, case, name), per_target in medians.items():
        if suite != "memory" or case != last or subject not in per_target:
            continue
        small = medians.get((suite, first, name), {}).get(subject)
        if small is None:
            continue
        large = per_target[subject]
        growth = large / small if small else 0.0
        bound = bounds.get(name.removesuffix(" peak MiB"))
        if bound is not None:
            checks.append((f"{subject} {name}: {last}, against the stated bound of "
                           f"{bound:g} MiB ({growth:.2f}x the {first}'s peak)",
                           "met" if large <= bound else "NOT MET", large))
            continue
        bounded = large <= small * GROWTH_ALLOWANCE + GROWTH_SLACK_MIB
        checks.append((f"{subject} {name}: {last} against {first} "
                       f"(ratio; bounded if <= {GROWTH_ALLOWANCE}x + {GROWTH_SLACK_MIB:g} MiB)",
                       "met" if bounded else "NOT MET", growth))
    return checks
