"""One run: bring up the subject and every baseline, run each suite's cases on all of
them interleaved (A B A B) so the machine's drift hits all alike, and write it down."""

import contextlib
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

from benchmarks import procs, report
from benchmarks.fileio_suite import FileioSuite
from benchmarks.fio_suite import FioSuite
from benchmarks.memory_suite import MemorySuite
from benchmarks.meta_suite import MetaSuite
from benchmarks.moosefs import MooseFS
from benchmarks.profile import Profiles, py_spy
from benchmarks.mysql_suite import MysqlSuite
from benchmarks.results import Row
from benchmarks.scale import Scale
from benchmarks.suite import Context, Outcome, Suite
from benchmarks.targets import Dfs, FusePass, Local, Target

SUITES: dict[str, type[Suite]] = {s.name: s for s in (FioSuite, MetaSuite, FileioSuite, MysqlSuite,
                                                       MemorySuite)}
TARGETS: dict[str, type[Target]] = {t.name: t for t in (Local, FusePass, MooseFS, Dfs)}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()}, {os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, "
            f"Linux {platform.release()}")


def pick(names: list[str], known: dict, what: str) -> list:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise procs.BenchError(f"unknown {what} {', '.join(unknown)}; choose from "
                               f"{', '.join(known)}")
    return [known[n] for n in names]


LOG_TAIL = 256 * 1024


def _keep_logs(target: Target, folder: Path) -> None:
    """Copy the end of each log of a target into the results, before it is removed."""
    for log in target.log_files():
        kept = folder / target.name / "-".join(log.relative_to(target.work).parts)
        kept.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "rb") as source:
            source.seek(max(0, log.stat().st_size - LOG_TAIL))
            kept.write_bytes(source.read())


def _stopper(target: Target, ctx: Context, failures: list[str]):
    """An exit callback that stops a target, keeping its logs when anything went wrong."""
    def stop(exc_type, exc, tb) -> bool:
        if failures or exc_type is not None:
            _keep_logs(target, ctx.artifacts / "logs")
        ctx.say(f"stopping {target.name}")
        try:
            target.down()
        except procs.BenchError as error:
            ctx.say(f"stopping {target.name} failed: {error}")
        return False
    return stop


def _attempt(suite: Suite, case: str, target: Target, root: Path, label: str,
             ctx: Context, failures: list[str]) -> Outcome | None:
    """Run one case on one target. A failed case must not cost the figures of the others:
    it is written down, and the run ends with an error status."""
    ctx.say(f"{suite.name} {case}, {label}, on {target.name}")
    # What the case before left unwritten (a target that does not sync keeps
    # it in the page cache) would otherwise reach the disk during this one.
    os.sync()
    try:
        outcome = suite.run(case, target, root, ctx)
    except (procs.BenchError, OSError) as exc:
        failures.append(f"{suite.name} {case} {label} on {target.name}: {str(exc)[:600]}")
        ctx.say(f"    FAILED: {exc}")
        return None
    ctx.say("    " + ", ".join(f"{c} {v:,.1f} {m}" for c, m, v in outcome.figures[:3]))
    return outcome


def _note_peaks(target: Target, peaks: dict) -> None:
    """Fold the peak resident memory of the target's running processes into `peaks`."""
    for role, pids in target.processes().items():
        if pids:
            mine = peaks.setdefault(target.name, {})
            mine[role] = max(mine.get(role, 0.0), *(procs.peak_rss_mib(p) for p in pids))


def _alone(target: Target, targets: list[Target], paused: set[str], peaks: dict,
           ctx: Context) -> None:
    """Stop every other target's processes and start this one's again, so that no
    target's idle processes weigh on another's figures (run --isolate, the default)."""
    for other in targets:
        if other is not target and other.name not in paused:
            _note_peaks(other, peaks)
            ctx.say(f"pausing {other.name}")
            other.pause()
            procs.wait_for(lambda: not any(other.processes().values()), 15,
                           f"{other.name}'s processes to stop")
            paused.add(other.name)
    if target.name in paused:
        ctx.say(f"resuming {target.name}")
        target.resume()
        paused.discard(target.name)


def run(suite_names: list[str], subject: str, baselines: list[str], rounds: int, scale: Scale,
        scale_name: str, results_dir: Path, work_dir: Path, profile: bool = False,
        isolate: bool = True, dfs_read_cache: int | None = None, xattrs: bool = True,
        dfs_async_dirops: bool = False) -> Path:
    """Run everything; returns the folder the results were written to."""
    suites = [cls() for cls in pick(suite_names, SUITES, "suite")]
    target_classes = pick([subject, *baselines], TARGETS, "target")
    if len(set(target_classes)) != len(target_classes):
        raise procs.BenchError(f"each target may appear once: subject {subject}, baselines "
                               f"{', '.join(baselines)}")
    for suite in suites:
        for tool in suite.tools:
            if shutil.which(tool) is None:
                raise procs.BenchError(f"{tool}, needed by the {suite.name} suite, is not "
                                       "installed (see benchmarks/README.md, set-up)")
    if profile:
        py_spy()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    artifacts = results_dir / stamp
    artifacts.mkdir(parents=True)
    work = work_dir / f"dfs-bench-{stamp}"
    ctx = Context(scale=scale, artifacts=artifacts, work=work)
    rows: list[Row] = []
    extra: dict = {}
    failures: list[str] = []
    # (suite, case, target) of counted rounds that failed: no verdict may rest on the rest.
    failed: list[tuple[str, str, str]] = []
    # Peak resident memory by target and role, over every process the run started.
    peaks: dict[str, dict[str, float]] = {}
    bounds: dict[str, dict[str, float]] = {}
    paused: set[str] = set()
    try:
        with contextlib.ExitStack() as stack:
            roots = {}
            targets = [cls(work) for cls in target_classes]
            for target in targets:
                target.xattrs = xattrs
                if isinstance(target, Dfs):
                    target.read_cache_mib = dfs_read_cache
                    target.async_dirops = dfs_async_dirops
            for target in targets:
                bounds[target.name] = target.memory_bounds()
                ctx.say(f"bringing up {target.name}")
                stack.push(_stopper(target, ctx, failures))
                roots[target.name] = target.up()
            for suite in suites:
                details: dict[str, list[dict]] = {}
                for case in suite.cases():
                    for round_no in range(1, rounds + 1):
                        for target in targets:
                            if isolate:
                                _alone(target, targets, paused, peaks, ctx)
                            outcome = _attempt(suite, case, target, roots[target.name],
                                               f"round {round_no}/{rounds}", ctx, failures)
                            if outcome is None:
                                failed.append((suite.name, case, target.name))
                                continue
                            rows += [Row(suite.name, c, m, target.name, round_no, v)
                                     for c, m, v in outcome.figures]
                            if outcome.detail is not None:
                                details.setdefault(target.name, []).append(outcome.detail)
                    if profile:
                        if isolate:
                            _alone(targets[0], targets, paused, peaks, ctx)
                        # An extra run, not counted: the profiler's own CPU would skew figures.
                        profiles = Profiles(targets[0], artifacts / "profiles",
                                            f"{suite.name}-{case}")
                        try:
                            _attempt(suite, case, targets[0], roots[subject],
                                     "profiled run (not counted)", ctx, failures)
                        finally:
                            profiles.stop()
                extra[suite.name] = {**suite.finish(details, ctx), "details": details}
            for target in targets:
                _note_peaks(target, peaks)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"stamp": stamp, "command": shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]]),
            "machine": machine(), "subject": subject, "baselines": baselines, "rounds": rounds,
            "suites": suite_names, "scale_name": scale_name, "scale": vars(scale),
            "notes": ctx.notes, "failures": failures, "failed": failed,
            "isolated": isolate, "dfs_read_cache_mib": dfs_read_cache, "xattrs": xattrs,
            "dfs_async_dirops": dfs_async_dirops,
            "memory": peaks,
            "memory_bounds": bounds}
    report.write_json(artifacts / "results.json", meta, rows, extra)
    (artifacts / "results.md").write_text(report.render_markdown(meta, rows, extra))
    ctx.say(f"results written to {artifacts}/results.md and results.json")
    if failures:
        raise procs.BenchError(f"{len(failures)} case(s) failed (listed in {artifacts}/"
                               "results.md):\n" + "\n".join(failures))
    return artifacts
