"""fio with data verification on a mount: every block written is read back
and checked against its CRC32C."""

import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed "
                                "(apt-get install fio; .ci/run installs it)")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("pattern", ["write", "randwrite"])
def test_fio_verify(mnt, pattern):
    result = subprocess.run(
        ["fio", "--name=verify", f"--directory={mnt}", f"--rw={pattern}", "--bs=64k",
         "--size=24m", "--numjobs=2", "--verify=crc32c", "--verify_fatal=1",
         "--do_verify=1", "--end_fsync=1", "--verify_state_save=0", "--output-format=json",
         "--group_reporting"],
        capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    job = report["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] >= 48 * 1024 * 1024
    assert job["read"]["io_bytes"] >= 48 * 1024 * 1024, "the verify pass read everything back"
