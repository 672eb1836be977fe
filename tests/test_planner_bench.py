"""The re-replication round micro-benchmark runs and reports sane figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("zones", [1, 2])
def test_planner_bench_times_rounds_over_a_real_table(zones):
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.planner_bench", "--chunks", "3000", "--rounds", "2",
         "--zones", str(zones), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(run.stdout)
    assert result["chunks"] == 3000 and result["rounds"] == 2 and result["zones"] == zones
    assert result["round_ms"] > 0 and result["per_chunk_us"] > 0
    # The table is as it should be: nothing short, nothing sharing a zone.
    assert result["under_replicated"] == 0 and result["misplaced"] == 0


def test_planner_bench_refuses_nonsense():
    run = subprocess.run([sys.executable, "-m", "benchmarks.planner_bench", "--chunks", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert run.returncode != 0 and "must be positive" in run.stderr
