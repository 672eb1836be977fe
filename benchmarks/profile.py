"""py-spy flame graphs of the subject's processes while a case runs, to show where the
time goes when a target is not met."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks import procs
from benchmarks.targets import Target


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise procs.BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


class Profiles:
    """One `py-spy record` per process of the target for the length of one case."""

    def __init__(self, target: Target, folder: Path, label: str):
        self.recorders = []
        folder.mkdir(parents=True, exist_ok=True)
        for role, pids in target.processes().items():
            for pid in pids:
                out = folder / f"{label}-{target.name}-{role}-{pid}.svg"
                # --nonblocking samples without pausing the process, so it is not slowed.
                self.recorders.append(subprocess.Popen(
                    [py_spy(), "record", "--pid", str(pid), "--output", str(out),
                     "--format", "flamegraph", "--rate", "100", "--nonblocking", "--threads"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        """py-spy writes its graph when interrupted."""
        for recorder in self.recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in self.recorders:
            try:
                recorder.wait(30)
            except subprocess.TimeoutExpired:
                procs.stop_process(recorder)
