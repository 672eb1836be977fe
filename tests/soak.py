"""Soak: fio with CRC32C verification on a dfs mount while a chaos loop
SIGKILLs and restarts chunk servers, the metaserver and a metalogger, and a
second mount makes names that the first must find at once.

    .venv/bin/python tests/soak.py --minutes 3

It brings up its own local cluster with `dfs up` in a fresh folder, runs fio
rounds (each writes a new set of files, fsyncs and reads them back verifying
every block) until the time is up, then stops the chaos, remounts (so nothing
comes from the page cache) and verifies every file of every finished round
once more, and checks that the metalogger's copy of the metadata equals the
metaserver's database item by item. Meanwhile a second mount, with
--async-dirops, makes files in folders of their own, BURST at a time (so it
makes them ahead: dfs/changequeue.py), and the first looks up the first name
of each burst before it is made (so it leases the folder too:
dfs/dirleases.py) and every name right after. It prints a summary and exits 0
only with zero verify errors, zero fio errors, zero lost files, that copy
equal and no name missed.
Everything is torn down at the end, also on
failure or Ctrl-C; --keep leaves the folder (logs) behind.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dfs.cluster import ANY_PORT, ClusterLayout, LocalCluster  # noqa: E402
from faults import (copy_matches, kill_server, restart_server, start_metalogger,  # noqa: E402
                    status, stop_process, wait_for)

CHUNK_SIZE = 4 << 20
SERVERS = 3
# Short, so a killed server is noticed within the soak's pace.
HEARTBEAT_TIMEOUT = 3
ROUND_SIZE = "24m"
JOBS = 2
# The chaos waits for full health before each kill, so one kill never takes
# the last replica of anything, then pauses this long between faults.
CHAOS_PAUSE = (4.0, 8.0)
HEAL_TIMEOUT = 90.0
# Files the second mount makes in one folder before it starts another, and
# in a row before the first mount looks for them.
NAMES_PER_FOLDER = 1000
BURST = 100


@dataclass
class Summary:
    minutes: float
    rounds: int = 0
    files_written: int = 0
    bytes_written: int = 0
    verify_errors: int = 0
    fio_errors: int = 0
    lost_files: int = 0
    chunkserver_kills: int = 0
    metaserver_kills: int = 0
    metalogger_kills: int = 0
    metalogger_copies: int = 0
    metalogger_in_step: bool = False
    names_made: int = 0
    names_missed: int = 0
    names_failed: int = 0
    final_verify_ok: bool = False
    failures: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.rounds > 0 and self.final_verify_ok and not self.verify_errors
                and not self.fio_errors and not self.lost_files and self.metalogger_in_step
                and self.names_made > 0 and not self.names_missed)


def dfs_command() -> str:
    return shutil.which("dfs") or str(Path(sys.executable).parent / "dfs")


def fio_args(mount: Path, round_no: int, verify_only: bool = False) -> list[str]:
    args = ["fio", f"--name=soak{round_no}", f"--directory={mount}",
            f"--filename_format=round{round_no}.$jobnum", "--rw=randwrite", "--bs=128k",
            f"--size={ROUND_SIZE}", f"--numjobs={JOBS}", "--ioengine=psync",
            "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--end_fsync=1",
            f"--randseed={1000 + round_no}", "--output-format=json", "--group_reporting"]
    if verify_only:
        args.append("--verify_only")
    return args


def run_fio(mount: Path, round_no: int, verify_only: bool = False) -> dict:
    result = subprocess.run(fio_args(mount, round_no, verify_only), capture_output=True,
                            text=True, timeout=600, cwd=mount.parent)
    out = result.stdout
    try:
        job = json.loads(out[out.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError):
        job = {"error": -1}
    verify_failed = "verify" in result.stderr.lower() and "bad" in result.stderr.lower()
    return {"code": result.returncode, "error": job.get("error", -1),
            "verify_failed": verify_failed, "stderr": result.stderr[-1500:],
            "written": job.get("write", {}).get("io_bytes", 0)}


class Metalogger:
    """The soak's metalogger, which the chaos kills and restarts too."""

    def __init__(self, local: LocalCluster, folder: Path):
        self.local = local
        self.folder = folder
        self.proc = start_metalogger(local, folder)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        self.proc = start_metalogger(self.local, self.folder)

    def copies(self) -> int:
        log = self.folder.parent / f"{self.folder.name}.log"
        return log.read_text().count("copied the metaserver's database")


class Names(threading.Thread):
    """The second mount (`maker`) makes files BURST at a time; the first
    (`seer`) looks up the first of each burst before it is made and must find
    every one right after. A create that fails (it may, while the chaos
    runs) is counted apart."""

    def __init__(self, seer: Path, maker: Path, summary: Summary):
        super().__init__(name="names", daemon=True)
        self.seer, self.maker = seer, maker
        self.summary = summary
        self.halt = threading.Event()

    def run(self) -> None:
        made, folders = 0, set()
        while not self.halt.is_set():
            folder = f"names{made // NAMES_PER_FOLDER}"
            burst = [f"{folder}/n{made + i}" for i in range(BURST)]
            made += BURST
            try:
                if folder not in folders:
                    os.makedirs(self.maker / folder, exist_ok=True)
                    folders.add(folder)
                os.path.exists(self.seer / burst[0])
            except OSError as exc:
                self._failed(folder, exc)
                continue
            done = []
            for name in burst:
                try:
                    (self.maker / name).touch(exist_ok=False)
                except OSError as exc:
                    self._failed(name, exc)
                    continue
                self.summary.names_made += 1
                done.append(name)
            for name in done:
                try:
                    os.lstat(self.seer / name)
                except FileNotFoundError:
                    self.summary.names_missed += 1
                    self.summary.failures.append(f"{name}, made by the second mount, not "
                                                 "found by the first")
                except OSError as exc:
                    self._failed(name, exc)

    def _failed(self, name: str, exc: OSError) -> None:
        self.summary.names_failed += 1
        print(f"  names: {name}: {exc}", flush=True)


class Chaos(threading.Thread):
    """Kill (SIGKILL) and restart a random chunk server, the metaserver or
    the metalogger, one fault at a time, each only once the cluster is fully
    healthy."""

    def __init__(self, local: LocalCluster, logger: Metalogger, summary: Summary, seed: int):
        super().__init__(daemon=True)
        self.local = local
        self.logger = logger
        self.summary = summary
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.error: str | None = None

    def _healthy(self) -> bool:
        st = status(self.local.ref())
        return (sum(cs["alive"] for cs in st["chunkservers"]) >= SERVERS
                and st["under_replicated"] == 0 and st["replicating"] == 0)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEAL_TIMEOUT
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not heal within {HEAL_TIMEOUT:.0f}s")
            if self.halt.wait(0.5):
                return

    def run(self) -> None:
        try:
            while not self.halt.wait(self.rng.uniform(*CHAOS_PAUSE)):
                self._wait_healthy()
                if self.halt.is_set():
                    return
                victim = self.rng.choice(["meta", "metalogger"]
                                         + [f"cs{i}" for i in range(1, SERVERS + 1)])
                if victim == "metalogger":
                    self.logger.kill()
                    self.summary.metalogger_kills += 1
                else:
                    kill_server(self.local, victim)
                    if victim == "meta":
                        self.summary.metaserver_kills += 1
                    else:
                        self.summary.chunkserver_kills += 1
                print(f"  chaos: SIGKILL {victim}", flush=True)
                time.sleep(self.rng.uniform(0.5, 4.0))
                if victim == "metalogger":
                    self.logger.restart()
                else:
                    restart_server(self.local, victim)
                print(f"  chaos: restarted {victim}", flush=True)
        except Exception as exc:
            self.error = f"chaos loop failed: {exc}"


def prepare(folder: Path) -> LocalCluster:
    """A cluster layout with a short heartbeat timeout, for `dfs up` to use."""
    local = LocalCluster(folder / "cluster", say=lambda *_: None)
    local.dir.mkdir(parents=True)
    local.save(ClusterLayout(meta=ANY_PORT, chunkservers=[ANY_PORT] * SERVERS,
                             replicas=2, chunk_size=CHUNK_SIZE,
                             extra_args={"heartbeat_timeout": HEARTBEAT_TIMEOUT}))
    return local


def soak(minutes: float, folder: Path, seed: int) -> Summary:
    summary = Summary(minutes)
    local = prepare(folder)
    mount = folder / "mnt"
    dfs = dfs_command()
    subprocess.run([dfs, "up", "--data-dir", str(local.dir), "--mount", str(mount),
                    "--chunkservers", str(SERVERS)], check=True, capture_output=True)
    logger = Metalogger(local, folder / "metalogger")
    second = folder / "mnt2"
    second.mkdir()
    try:
        subprocess.run([dfs, "mount", "--data-dir", str(local.dir), "--async-dirops",
                        "--log-file", str(folder / "mnt2.log"), str(second)], check=True,
                       capture_output=True)
        names = Names(mount, second, summary)
        names.start()
        chaos = Chaos(local, logger, summary, seed)
        chaos.start()
        deadline = time.monotonic() + minutes * 60
        finished = []
        while time.monotonic() < deadline and chaos.error is None:
            result = run_fio(mount, summary.rounds)
            print(f"  round {summary.rounds}: fio exit {result['code']}, "
                  f"error {result['error']}, {result['written'] >> 20} MiB written", flush=True)
            if result["verify_failed"]:
                summary.verify_errors += 1
            if result["code"] or result["error"]:
                summary.fio_errors += 1
                summary.failures.append(result["stderr"])
            else:
                finished.append(summary.rounds)
                summary.files_written += JOBS
                summary.bytes_written += result["written"]
            summary.rounds += 1
        chaos.halt.set()
        names.halt.set()
        chaos.join(HEAL_TIMEOUT + 30)
        names.join(HEAL_TIMEOUT)
        subprocess.run([dfs, "umount", str(second)], capture_output=True)
        if chaos.error:
            summary.failures.append(chaos.error)
        for name in ["meta"] + [f"cs{i}" for i in range(1, SERVERS + 1)]:
            restart_server(local, name)
        if logger.proc.poll() is not None:
            logger.restart()
        try:
            wait_for(lambda: copy_matches(local, logger.folder), 120,
                     "the metalogger's copy to catch up")
            summary.metalogger_in_step = True
        except AssertionError as exc:
            summary.failures.append(f"metalogger: {exc}")
        summary.metalogger_copies = logger.copies()

        # Verify again on a fresh mount, so every byte comes from the chunk servers.
        subprocess.run([dfs, "umount", str(mount)], check=True, capture_output=True)
        subprocess.run([dfs, "up", "--data-dir", str(local.dir), "--mount", str(mount)],
                       check=True, capture_output=True)
        present = {p.name for p in mount.iterdir()}
        ok = True
        for round_no in finished:
            names = [f"round{round_no}.{job}" for job in range(JOBS)]
            lost = [n for n in names if n not in present]
            summary.lost_files += len(lost)
            if lost:
                summary.failures.append(f"lost files: {lost}")
                ok = False
                continue
            result = run_fio(mount, round_no, verify_only=True)
            if result["code"] or result["error"] or result["verify_failed"]:
                summary.verify_errors += 1
                summary.failures.append(f"final verify of round {round_no}: "
                                        f"{result['stderr']}")
                ok = False
        summary.final_verify_ok = ok
    finally:
        stop_process(logger.proc)
        subprocess.run([dfs, "umount", "--lazy", str(second)], capture_output=True)
        subprocess.run([dfs, "down", "--data-dir", str(local.dir)], capture_output=True)
        for name in ["meta"] + [f"cs{i}" for i in range(1, SERVERS + 1)]:
            local.stop(local.dir / name, sig=signal.SIGKILL)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="soak.py", description=__doc__.split("\n\n")[0],
        epilog="example: .venv/bin/python tests/soak.py --minutes 3 (needs root, "
               "/dev/fuse and fio)")
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="how long fio runs under chaos (default 3)")
    parser.add_argument("--seed", type=int, default=int(time.time()),
                        help="seed of the chaos loop's choices (default: the time)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the cluster folder (logs) instead of removing it")
    args = parser.parse_args(argv)
    if shutil.which("fio") is None:
        parser.error("fio is not installed")
    folder = Path(tempfile.mkdtemp(prefix="dfs-soak-"))
    print(f"soak: {args.minutes:g} min, seed {args.seed}, folder {folder}", flush=True)
    try:
        summary = soak(args.minutes, folder, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({**asdict(summary), "passed": summary.passed}, indent=2))
    print(f"soak {'PASSED' if summary.passed else 'FAILED'}: {summary.rounds} rounds, "
          f"{summary.bytes_written >> 20} MiB verified, {summary.verify_errors} verify errors, "
          f"{summary.lost_files} lost files, {summary.chunkserver_kills} chunk server, "
          f"{summary.metaserver_kills} metaserver and {summary.metalogger_kills} metalogger "
          f"kills, metalogger {'in step' if summary.metalogger_in_step else 'NOT in step'} "
          f"({summary.metalogger_copies} cop{'y' if summary.metalogger_copies == 1 else 'ies'}"
          f" of the database), {summary.names_made} names made by the second mount "
          f"({summary.names_missed} not found by the first, {summary.names_failed} failed)")
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
