"""The RPC micro-benchmark runs end to end and reports sane figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def test_rpc_bench_reports_positive_figures():
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.rpc_bench", "--duration", "0.3", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=100, check=True)
    rows = json.loads(run.stdout)
    assert {(row["case"], row["inflight"]) for row in rows} == {
        (case, inflight) for case in ("tiny", "read-4k", "write-4k", "read-1m", "write-1m")
        for inflight in (1, 16)}
    for row in rows:
        assert row["calls_per_s"] > 0
        assert 0 < row["p50_us"] <= row["p99_us"]
        assert row["client_cpu_us"] >= 0 and row["server_cpu_us"] >= 0
        assert (row["mib_per_s"] > 0) == (row["case"] != "tiny")


def test_rpc_bench_help_explains_itself():
    run = subprocess.run([sys.executable, "-m", "benchmarks.rpc_bench", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    for flag in ("--cases", "--inflight", "--duration", "--rounds", "--json"):
        assert flag in run.stdout
