"""The dfs-metaserver command line: help, and clear refusals of bad settings."""

import os
import subprocess
import sys

import pytest

from test_metaserver_support import REPO

pytestmark = pytest.mark.timeout(60)

FLAGS = ["--listen", "--data-dir", "--secret-file", "--chunk-size", "--replicas",
         "--heartbeat-timeout", "--session-ttl", "--lease-seconds", "--ready-file",
         "--log-level"]


def metaserver(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DFS_")}
    return subprocess.run([sys.executable, "-m", "metaserver.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30, env={**clean, **(env or {})})


def test_help_explains_every_flag():
    result = metaserver("--help")
    assert result.returncode == 0
    for flag in FLAGS:
        assert flag in result.stdout, flag


@pytest.mark.parametrize("args, complaint", [
    (["--listen", "nowhere", "--data-dir", "d"], "--listen"),
    (["--listen", "127.0.0.1:0", "--data-dir", "d", "--chunk-size", "1000"], "--chunk-size"),
    (["--listen", "127.0.0.1:0", "--data-dir", "d", "--replicas", "0"], "--replicas"),
    (["--listen", "127.0.0.1:0", "--data-dir", "d", "--session-ttl", "0"], "--session-ttl"),
    (["--listen", "127.0.0.1:0", "--data-dir", "d"], "secret"),
])
def test_bad_settings_are_refused(tmp_path, args, complaint):
    args = [str(tmp_path / a) if a == "d" else a for a in args]
    result = metaserver(*args)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert not (tmp_path / "d").exists(), "nothing is created when the settings are bad"
