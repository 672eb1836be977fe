"""The benchmark runner in smoke mode (tiny sizes, seconds-long runs) on real mounts,
so it never rots; plus its bad-input and reporting paths. Full runs are not tests."""

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# benchmarks/ is run from the repository (python -m benchmarks), not installed with dfs.
sys.path.insert(0, str(REPO))

from benchmarks import goals, memory_suite, report, targets  # noqa: E402
from benchmarks.procs import BenchError  # noqa: E402
from benchmarks.results import Row, medians  # noqa: E402
from benchmarks.scale import SMOKE  # noqa: E402
TOOLS = {"fio": "fio", "sysbench": "sysbench", "bindfs": "bindfs", "mariadbd": "mariadb-server",
         "mfsmaster": "moosefs-master", "mfschunkserver": "moosefs-chunkserver",
         "mfsmount": "moosefs-client"}


def _missing(*tools: str) -> list[str]:
    return [TOOLS[t] for t in tools if shutil.which(t) is None]


def _needs(*tools: str):
    missing = _missing(*tools)
    return pytest.mark.skipif(bool(missing), reason=f"apt-get install -y {' '.join(missing)} "
                              "(the benchmarks' Debian packages)")


def bench(tmp_path: Path, *args: str, limit: float) -> subprocess.CompletedProcess:
    """Run `python -m benchmarks run`; past the limit it gets SIGTERM, so it cleans up."""
    cmd = [sys.executable, "-m", "benchmarks", "run", "--results", str(tmp_path / "results"),
           "--work-dir", str(tmp_path / "work"), *args]
    (tmp_path / "work").mkdir(exist_ok=True)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the runner took over {limit} s:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    done.pid = proc.pid
    return done


def assert_nothing_left(tmp_path: Path, runner_pid: int) -> None:
    mounts = Path("/proc/self/mounts").read_text()
    assert str(tmp_path) not in mounts
    assert not list((tmp_path / "work").iterdir()), "the work folder is removed after a run"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"dfsbench-{runner_pid}" not in [line.split()[0] for line in netns.splitlines()]
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout == "", f"processes left behind: {leftover.stdout}"


def only_result(tmp_path: Path) -> tuple[dict, str, Path]:
    [folder] = (tmp_path / "results").iterdir()
    return (json.loads((folder / "results.json").read_text()),
            (folder / "results.md").read_text(), folder)


@_needs("fio", "sysbench", "mariadbd")
@pytest.mark.timeout(150)
def test_every_suite_runs_on_dfs(tmp_path):
    done = bench(tmp_path, "--smoke", "--rounds", "1", "--subject", "dfs", "--compare", "",
                 "--suite", "fio,meta,sysbench,mysql,memory", limit=130)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "round 1/1, on dfs" in done.stderr, "progress is shown while it runs"
    data, markdown, folder = only_result(tmp_path)
    seen = {(r["suite"], r["case"], r["metric"]) for r in data["rows"] if r["target"] == "dfs"}
    for figure in [("fio", "seq-write", "MB/s"), ("fio", "seq-write", "CPU s/GiB"),
                   ("fio", "seq-read", "MB/s"), ("fio", "rand-read", "IOPS"),
                   ("fio", "rand-write", "p99 ms"), ("fio", "par-write", "MB/s"),
                   ("meta", "create", "ops/s"), ("meta", "rmdir", "ops/s"),
                   ("sysbench", "rndrw", "IOPS"), ("mysql", "oltp", "QPS"),
                   ("mysql", "oltp", "zero-QPS s"), ("mysql", "expansion 2", "after/before"),
                   ("memory", "1m file", "client peak MiB"),
                   ("memory", "4m file", "chunkserver peak MiB")]:
        assert figure in seen
    assert "| fio | seq-write | MB/s |" in markdown
    assert "| dfs client peak MiB: 4m file, against the stated bound of 390 MiB" in markdown
    expansions = data["suites"]["mysql"]["details"]["dfs"][0]["expansions"]
    assert [e["error"] for e in expansions] == ["", ""], "both online expansions went through"
    if importlib.util.find_spec("matplotlib"):
        assert (folder / "mysql-qps.png").stat().st_size > 0
    else:
        assert "pip install matplotlib" in markdown, "a missing plotter says how to get it"
    assert set(data["memory"]["dfs"]) >= {"metaserver", "chunkserver", "client"}
    assert_nothing_left(tmp_path, done.pid)


@_needs("bindfs")
@pytest.mark.timeout(150)
def test_isolate_runs_each_case_with_the_other_targets_stopped(tmp_path):
    done = bench(tmp_path, "--smoke", "--rounds", "2", "--subject", "dfs",
                 "--compare", "fusepass", "--suite", "meta", "--dfs-read-cache", "32",
                 limit=130)
    assert done.returncode == 0, done.stderr[-4000:]
    steps = [line.split("] ", 1)[1].strip() for line in done.stderr.splitlines()
             if "pausing" in line or "resuming" in line or "meta files, round" in line]
    assert steps == [
        "pausing fusepass", "meta files, round 1/2, on dfs",
        "pausing dfs", "resuming fusepass", "meta files, round 1/2, on fusepass",
        "pausing fusepass", "resuming dfs", "meta files, round 2/2, on dfs",
        "pausing dfs", "resuming fusepass", "meta files, round 2/2, on fusepass"]
    data, markdown, _ = only_result(tmp_path)
    assert data["isolated"] is True
    assert "each case ran with the other targets stopped" in markdown
    # dfs up took the read cache's size, on every resume too.
    assert data["dfs_read_cache_mib"] == 32
    assert "dfs mounted with --read-cache 32" in markdown
    assert {(r["target"], r["round"]) for r in data["rows"]} == {
        ("dfs", 1), ("dfs", 2), ("fusepass", 1), ("fusepass", 2)}
    # Peaks of processes stopped along the way are kept.
    assert set(data["memory"]["dfs"]) >= {"metaserver", "chunkserver", "client"}
    assert set(data["memory"]["fusepass"]) == {"client"}
    assert_nothing_left(tmp_path, done.pid)


@_needs("bindfs")
@pytest.mark.timeout(60)
def test_no_isolate_keeps_every_target_up(tmp_path):
    done = bench(tmp_path, "--smoke", "--rounds", "1", "--subject", "dfs",
                 "--compare", "fusepass", "--suite", "meta", "--no-isolate", limit=50)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "pausing" not in done.stderr and "resuming" not in done.stderr
    data, markdown, _ = only_result(tmp_path)
    assert data["isolated"] is False
    assert "every target stayed up throughout" in markdown
    assert_nothing_left(tmp_path, done.pid)


@_needs("fio", "bindfs", "mfsmaster", "mfschunkserver", "mfsmount")
@pytest.mark.timeout(100)
def test_baselines_fusepass_and_moosefs_come_up_measure_and_go(tmp_path):
    done = bench(tmp_path, "--smoke", "--rounds", "2", "--subject", "fusepass",
                 "--compare", "moosefs", "--suite", "meta", limit=80)
    assert done.returncode == 0, done.stderr[-4000:]
    data, markdown, _ = only_result(tmp_path)
    rounds = {(r["target"], r["round"]) for r in data["rows"]}
    assert rounds == {("fusepass", 1), ("fusepass", 2), ("moosefs", 1), ("moosefs", 2)}
    order = [line.rsplit(" on ", 1)[1] for line in done.stderr.splitlines()
             if "meta files, round" in line]
    assert order == ["fusepass", "moosefs", "fusepass", "moosefs"], "rounds interleave A B A B"
    # Isolated by default: MooseFS stops while the other target runs, and comes back
    # on the metadata it saved (the rounds above found their folder and files).
    steps = [line.split("] ", 1)[1].strip() for line in done.stderr.splitlines()
             if "pausing" in line or "resuming" in line]
    assert steps == ["pausing moosefs", "pausing fusepass", "resuming moosefs",
                     "pausing moosefs", "resuming fusepass", "pausing fusepass",
                     "resuming moosefs"]
    assert data["isolated"] is True
    assert "| meta create ops/s >= 1x moosefs |" in markdown
    assert "| fusepass/moosefs |" in markdown
    assert set(data["memory"]) == {"fusepass", "moosefs"}
    assert_nothing_left(tmp_path, done.pid)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args, message", [
    (["--suite", "nosuch"], "unknown suite nosuch"),
    (["--compare", "nfs"], "unknown target nfs"),
    (["--set", "seq_sise=1g"], "expected NAME=VALUE"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--compare", "local,dfs"], "each target may appear once"),
    (["--dfs-read-cache", "8"], "the read cache takes at least 16 MiB"),
])
def test_bad_input_is_refused_with_a_clear_message(tmp_path, args, message):
    done = bench(tmp_path, "--smoke", *args, limit=20)
    assert done.returncode != 0
    assert message in done.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").iterdir())


def test_scale_overrides_apply_by_name_and_type():
    scale = SMOKE.with_overrides(["seq_size=64m", "mysql_seconds=30"])
    assert (scale.seq_size, scale.mysql_seconds) == ("64m", 30)
    with pytest.raises(BenchError):
        SMOKE.with_overrides(["mysql_seconds"])


def test_memory_is_judged_by_the_stated_bound_or_else_by_growth():
    peaks = (("64m", "client", 30), ("1g", "client", 100), ("4g", "client", 150),
             ("64m", "chunkserver", 40), ("1g", "chunkserver", 50), ("4g", "chunkserver", 60),
             ("64m", "metaserver", 30), ("1g", "metaserver", 30), ("4g", "metaserver", 31),
             ("64m", "csi", 20), ("1g", "csi", 20), ("4g", "csi", 200))
    rows = [Row("memory", f"{size} file", f"{role} peak MiB", "dfs", 1, mib)
            for size, role, mib in peaks]
    checks = {what.split(":")[0]: (verdict, value) for what, verdict, value in
              memory_suite.memory_checks(medians(rows), "dfs", "64m,1g,4g",
                                         {"client": 160, "chunkserver": 55})}
    assert checks == {
        # 1.5x growth, under its bound: what a filling pipeline looks like.
        "dfs client peak MiB": ("met", 150),
        # Little growth, over its bound.
        "dfs chunkserver peak MiB": ("NOT MET", 60),
        # No bound stated: growth decides.
        "dfs metaserver peak MiB": ("met", 31 / 30),
        "dfs csi peak MiB": ("NOT MET", 10.0)}


def test_dfs_states_a_client_bound_that_follows_its_read_cache(tmp_path):
    dfs = targets.Dfs(tmp_path)
    default = dfs.memory_bounds()
    dfs.read_cache_mib = 1024
    assert dfs.memory_bounds()["client"] == default["client"] + 1024 - 256
    assert dfs.memory_bounds()["chunkserver"] == default["chunkserver"]


def test_targets_are_judged_on_medians_against_moosefs():
    rows = [Row("fio", "seq-write", "MB/s", "dfs", r, v) for r, v in ((1, 300), (2, 400))]
    rows += [Row("fio", "seq-write", "MB/s", "moosefs", r, v) for r, v in ((1, 200), (2, 250))]
    rows += [Row("fio", "rand-read", "p99 ms", "dfs", 1, 0.5),
             Row("fio", "rand-read", "p99 ms", "moosefs", 1, 0.4),
             Row("mysql", "oltp", "zero-QPS s", "dfs", 1, 0)]
    table = medians(rows)
    verdicts = {g.describe(): g.judge(table, "dfs") for g in goals.RATIO_GOALS}
    assert verdicts["fio seq-write MB/s >= 1.5x moosefs"] == ("met", 350 / 225)
    assert verdicts["fio rand-read p99 ms <= 1x moosefs"][0] == "NOT MET"
    assert verdicts["fio par-write MB/s >= 1.5x moosefs"] == ("not measured", None)
    meta = {"stamp": "s", "command": "c", "machine": "m", "subject": "dfs",
            "baselines": ["moosefs"], "rounds": 2, "suites": ["fio", "mysql"],
            "scale_name": "smoke", "scale": {}, "notes": [], "memory": {}}
    markdown = report.render_markdown(meta, rows, {})
    assert "| fio rand-read p99 ms <= 1x moosefs | 1.25 | NOT MET |" in markdown
    assert "| mysql zero-QPS s == 0 | 0 | met |" in markdown


def test_a_round_of_the_subject_that_failed_fails_its_verdicts():
    """The medians leave a failed round out; the verdicts must not (20261127-052652:
    MariaDB on dfs stalled for good in round 2, round 1 alone said "met")."""
    rows = [Row("fio", "seq-write", "MB/s", "dfs", 1, 400),
            Row("fio", "seq-write", "MB/s", "moosefs", 1, 200),
            Row("fio", "seq-write", "MB/s", "moosefs", 2, 250),
            Row("fio", "seq-read", "MB/s", "dfs", 1, 500),
            Row("fio", "seq-read", "MB/s", "dfs", 2, 500),
            Row("fio", "seq-read", "MB/s", "moosefs", 1, 400),
            Row("mysql", "oltp", "QPS", "dfs", 1, 1200),
            Row("mysql", "oltp", "QPS", "moosefs", 1, 1000),
            Row("mysql", "oltp", "zero-QPS s", "dfs", 1, 0)]
    failed = [("fio", "seq-write", "dfs"), ("fio", "seq-read", "moosefs"),
              ("mysql", "oltp", "dfs"), ("memory", "sizes", "dfs")]
    table = medians(rows)
    verdicts = {g.describe(): g.judge(table, "dfs", frozenset(failed))
                for g in goals.RATIO_GOALS}
    assert verdicts["fio seq-write MB/s >= 1.5x moosefs"] == ("NOT MET (a round failed)",
                                                              400 / 225)
    # A baseline's failed round is the baseline's problem, not the subject's.
    assert verdicts["fio seq-read MB/s >= 1x moosefs"] == ("met", 1.25)
    meta = {"stamp": "s", "command": "c", "machine": "m", "subject": "dfs",
            "baselines": ["moosefs"], "rounds": 2, "suites": ["fio", "mysql"],
            "scale_name": "smoke", "scale": {}, "notes": [], "memory": {},
            "failures": ["mysql oltp round 2/2 on dfs: sysbench exited with 1"],
            "failed": [list(f) for f in failed]}
    markdown = report.render_markdown(meta, rows, {})
    assert "| mysql oltp QPS >= 1x moosefs | 1.2 | NOT MET (a round failed) |" in markdown
    assert "| mysql: every round ran to its end | 1 | NOT MET |" in markdown
    assert "| memory: every round ran to its end | 1 | NOT MET |" in markdown
    assert "| fio: every round ran to its end | 1 | NOT MET |" in markdown
    assert "| mysql zero-QPS s == 0 | 0 | met |" in markdown
