"""python -m benchmarks: measure dfs and its baselines in one interleaved run."""

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from benchmarks import procs, runner
from benchmarks.scale import FULL, SMOKE
from dfs.mount import read_cache_mib

RESULTS = Path(__file__).parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks dfs side by side with baselines on this machine. Run as root "
                    "(it mounts FUSE filesystems, drops the page cache and, for MooseFS, "
                    "creates a network namespace). See benchmarks/README.md.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run suites on the subject and each baseline and write the results",
        description="Bring up the subject filesystem and each baseline, run every case of "
                    "each suite on all of them in turn (A B A B ...), and write results.json "
                    "and results.md (with ratios subject/baseline) into a new timestamped "
                    "folder under --results.")
    run.add_argument("--suite", default="fio,meta,sysbench,mysql,memory",
                     help="comma-separated suites: fio, meta, sysbench, mysql, memory "
                          "(peak memory of each process against file size; default: all)")
    run.add_argument("--compare", default="local,fusepass,moosefs",
                     help="comma-separated baselines: local (a plain folder), fusepass "
                          "(bindfs), moosefs (MooseFS, goal 2 on three chunk servers); "
                          "default: all three")
    run.add_argument("--subject", default="dfs",
                     help="the filesystem measured against the baselines (default: dfs, a "
                          "local cluster from 'dfs up' with three chunk servers at "
                          "replication 2)")
    run.add_argument("--rounds", type=int, default=2,
                     help="interleaved rounds of every case; figures are medians (default 2)")
    run.add_argument("--smoke", action="store_true",
                     help="tiny sizes and seconds-long runs, to check the runner works")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override one size or duration, e.g. --set seq_size=256m or "
                          "--set mysql_seconds=120 (repeatable; names in benchmarks/scale.py)")
    run.add_argument("--profile", action="store_true",
                     help="after the rounds of every case, run it once more on the subject "
                          "(not counted) and record a py-spy flame graph of each of its "
                          "processes into profiles/ beside the results (needs .venv/bin/pip "
                          "install py-spy)")
    run.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                     help="while a case runs on one target, stop the other targets' "
                          "processes (their data is kept) and start them again before "
                          "their own cases, so that no target's idle processes weigh on "
                          "another's figures (an idle MooseFS costs about 5%% of a core); "
                          "MooseFS takes about 6 s to stop and 3 s to start each time "
                          "(default: on; --no-isolate keeps every target up throughout)")
    run.add_argument("--dfs-read-cache", type=read_cache_mib, metavar="MIB",
                     help="mount dfs with this much read cache (dfs up --read-cache); "
                          "default: the mount's own, 256 MiB")
    run.add_argument("--dfs-async-dirops", action="store_true",
                     help="mount dfs with --async-dirops (dfs up --async-dirops): creates, "
                          "mkdirs, unlinks and renames in a folder only this mount uses are "
                          "answered at once and recorded right after; default: each waits "
                          "until the metaserver recorded it")
    run.add_argument("--no-xattrs", dest="xattrs", action="store_false",
                     help="mount every FUSE target without extended attributes (dfs "
                          "--no-xattrs, MooseFS -o mfsnoxattrs, bindfs --xattr-none), so "
                          "that the kernel stops asking each for security.capability "
                          "before every write; default: served, as each mounts by default")
    run.add_argument("--results", type=Path, default=RESULTS,
                     help=f"where result folders go (default: {RESULTS})")
    run.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()),
                     help="where mounts and cluster data live during the run, removed "
                          "afterwards (default: the temp folder)")
    return parser


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        if args.rounds < 1:
            raise procs.BenchError("--rounds must be at least 1")
        scale = (SMOKE if args.smoke else FULL).with_overrides(args.set)
        runner.run([s for s in args.suite.split(",") if s], args.subject,
                   [b for b in args.compare.split(",") if b], args.rounds, scale,
                   ("smoke" if args.smoke else "full") + (" with overrides" if args.set else ""),
                   args.results, args.work_dir, args.profile, args.isolate,
                   args.dfs_read_cache, args.xattrs, args.dfs_async_dirops)
    except procs.BenchError as exc:
        sys.exit(f"benchmarks: {exc}")
    except KeyboardInterrupt:
        sys.exit("benchmarks: interrupted; everything started was stopped")
