"""Running commands and watching processes: mounts, CPU seconds, peak memory."""

import os
import subprocess
import tempfile
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark step failed; the message says which command and why."""


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to completion; a non-zero exit becomes a BenchError with its stderr."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError:
        raise BenchError(f"{cmd[0]} is not installed (see benchmarks/README.md, set-up)") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd)} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise BenchError(f"{' '.join(cmd)} exited with {done.returncode}: {detail}")
    return done


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def wait_for(check, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Ask a process we started to stop, and kill it if it does not."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def signal_process(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def unmount(path: Path) -> None:
    """Unmount if mounted; a busy mount is detached lazily so cleanup never hangs."""
    if not is_mounted(path):
        return
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def pids_matching(needle: str) -> list[int]:
    """Processes whose command line mentions needle (a data folder or mount point)."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and int(entry.name) != os.getpid()
            and needle in cmdline(int(entry.name))]


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds consumed so far by these processes (all threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    """Highest resident memory this process has reached (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh from the current resident memory (Linux 4.0 and later)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5\n")
    except OSError:
        pass


def socket_folder(prefix: str) -> Path:
    """A new folder with a short path for a unix socket: a socket path may hold only
    107 bytes, which a pytest temporary folder alone can exceed."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def drop_caches() -> bool:
    """Empty the kernel page cache so the next read is cold; False when not permitted."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True
