"""The founding demo: MariaDB on a volume with a quota, sysbench oltp_read_write while a
bulk load keeps the data growing, and the volume expanded online twice mid-run."""

import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

from benchmarks import procs
from benchmarks.mariadb import MariaDB
from benchmarks.suite import Context, Outcome, Suite
from benchmarks.targets import Target

VOLUME = "bench-mysql"
DATABASE = "sbtest"
WINDOW = 10
REPORT_LINE = re.compile(r"\[ *(\d+)s \] thds: \d+ tps: ([\d.]+) qps: ([\d.]+) .*?"
                         r"lat \(ms,95%\): ([\d.]+) err/s: ([\d.]+)")
BULK_ROW = "REPEAT(MD5(RAND()), 32)"   # 1 KiB of incompressible text per row


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _parse_report(line: str) -> dict | None:
    """One of sysbench's per-second lines (--report-interval=1), or None for other lines."""
    found = REPORT_LINE.search(line)
    if not found:
        return None
    return {"second": int(found.group(1)), "tps": float(found.group(2)),
            "qps": float(found.group(3)), "p95_ms": float(found.group(4)),
            "err_s": float(found.group(5))}


class Growth(threading.Thread):
    """The bulk load: inserts rows once a second and samples the data folder's size."""

    def __init__(self, db: MariaDB, rows: int, started: float):
        super().__init__(daemon=True)
        self.db, self.rows, self.started = db, rows, started
        self.stop_event = threading.Event()
        self.sizes: list[tuple[float, int]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        # seq_1_to_N is MariaDB's Sequence engine: N rows from one short statement.
        statement = (f"USE {DATABASE}; INSERT INTO bulk (payload) SELECT {BULK_ROW} "
                     f"FROM seq_1_to_{self.rows}")
        while not self.stop_event.is_set():
            tick = time.monotonic()
            try:
                self.db.sql(statement, timeout=30)
            except procs.BenchError as exc:
                self.errors.append(str(exc))
            self.sizes.append((tick - self.started, _folder_bytes(self.db.datadir)))
            self.stop_event.wait(max(0.0, 1 - (time.monotonic() - tick)))


class MysqlSuite(Suite):
    name = "mysql"
    tools = ("sysbench", "mariadbd")

    def cases(self) -> list[str]:
        return ["oltp"]

    def run(self, case: str, target: Target, root: Path, ctx: Context) -> Outcome:
        scale = ctx.scale
        volume_bytes = scale.volume_mib << 20
        target.remove_volume(VOLUME)
        volume = target.make_volume(VOLUME, volume_bytes)
        rundir = ctx.work / f"mariadb-{target.name}"
        shutil.rmtree(rundir, ignore_errors=True)
        db = MariaDB(volume / "data", rundir)
        try:
            db.start()
            return self._measure(target, db, volume_bytes, ctx)
        finally:
            db.stop()
            target.remove_volume(VOLUME)

    def _measure(self, target: Target, db: MariaDB, volume_bytes: int, ctx: Context) -> Outcome:
        scale = ctx.scale
        db.sql(f"CREATE DATABASE {DATABASE}; CREATE TABLE {DATABASE}.bulk "
               "(id BIGINT AUTO_INCREMENT PRIMARY KEY, payload TEXT) ENGINE=InnoDB")
        oltp = ["sysbench", "oltp_read_write", "--db-driver=mysql",
                f"--mysql-socket={db.socket}", "--mysql-user=root", f"--mysql-db={DATABASE}",
                f"--tables={scale.mysql_tables}", f"--table-size={scale.mysql_table_rows}"]
        procs.run([*oltp, f"--threads={scale.mysql_tables}", "prepare"], timeout=900)
        schedule = [scale.mysql_seconds // 3, 2 * scale.mysql_seconds // 3]
        sizes = [volume_bytes * 3 // 2, volume_bytes * 2]
        started = time.monotonic()
        growth = Growth(db, scale.bulk_rows_per_second, started)
        growth.start()
        expansions, workers, per_second = [], [], []
        run = subprocess.Popen([*oltp, f"--threads={scale.mysql_threads}",
                                f"--time={scale.mysql_seconds}", "--report-interval=1", "run"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = []
        try:
            for line in run.stdout:
                output.append(line)
                report = _parse_report(line)
                if report is None:
                    continue
                per_second.append(report)
                second = report["second"]
                if second % 10 == 0:
                    ctx.say(f"  mysql on {target.name}: {second}s qps {report['qps']:,.0f}")
                if schedule and second >= schedule[0]:
                    schedule.pop(0)
                    worker = threading.Thread(target=self._expand, daemon=True,
                                              args=(target, second, sizes.pop(0), expansions, ctx))
                    worker.start()
                    workers.append(worker)
            run.wait(timeout=120)
        finally:
            procs.stop_process(run)
            growth.stop_event.set()
            growth.join(60)
            for worker in workers:
                worker.join(60)
        if run.returncode != 0:
            raise procs.BenchError(f"sysbench oltp_read_write exited with {run.returncode}:\n"
                                   + "".join(output[-30:]))
        # Deadlocks that sysbench retried are part of OLTP life, not failures: count apart.
        retried = re.search(r"ignored errors:\s+(\d+)", "".join(output))
        errors = len(growth.errors) + sum(1 for e in expansions if e["error"])
        detail = {"per_second": per_second, "expansions": expansions, "data_bytes": growth.sizes,
                  "bulk_errors": growth.errors[:5], "has_quota": target.has_quota,
                  "expands_with": target.expands_with}
        figures = self._figures(per_second, expansions, errors)
        figures.append(("oltp", "retried deadlocks", int(retried.group(1)) if retried else 0))
        return Outcome(figures, detail)

    @staticmethod
    def _expand(target: Target, second: int, size: int, expansions: list, ctx: Context) -> None:
        began = time.monotonic()
        error = ""
        try:
            target.expand_volume(VOLUME, size)
        except procs.BenchError as exc:
            error = str(exc)
            ctx.say(f"  expansion on {target.name} failed: {error}")
        expansions.append({"second": second, "bytes": size, "error": error,
                           "took_s": round(time.monotonic() - began, 3)})
        ctx.say(f"  mysql on {target.name}: volume expanded to {size >> 20} MiB at {second}s")

    @staticmethod
    def _figures(per_second: list[dict], expansions: list[dict], errors: int) -> list:
        if not per_second:
            raise procs.BenchError("sysbench reported no second of oltp_read_write")
        qps = {row["second"]: row["qps"] for row in per_second}
        figures = [("oltp", "QPS", statistics.mean(qps.values())),
                   ("oltp", "TPS", statistics.mean(r["tps"] for r in per_second)),
                   ("oltp", "p95 ms", statistics.median(r["p95_ms"] for r in per_second)),
                   ("oltp", "zero-QPS s", sum(1 for v in qps.values() if v == 0)),
                   ("oltp", "errors", errors)]
        for index, expansion in enumerate(sorted(expansions, key=lambda e: e["second"]), 1):
            at = expansion["second"]
            before = [qps[s] for s in range(at - WINDOW + 1, at + 1) if s in qps]
            after = [qps[s] for s in range(at + 1, at + WINDOW + 1) if s in qps]
            if before and after and statistics.mean(before) > 0:
                mean_before, mean_after = statistics.mean(before), statistics.mean(after)
                figures += [(f"expansion {index}", "QPS 10 s before", mean_before),
                            (f"expansion {index}", "QPS 10 s after", mean_after),
                            (f"expansion {index}", "after/before", mean_after / mean_before)]
        return figures

    def finish(self, details: dict[str, list[dict]], ctx: Context) -> dict:
        from benchmarks.plot import plot_qps
        path = ctx.artifacts / "mysql-qps.png"
        try:
            plot_qps(details, path)
        except ImportError:
            ctx.note("no plot: matplotlib is missing (pip install matplotlib, or apt-get "
                     "install python3-matplotlib for the system Python)")
            return {}
        return {"plot": path.name}
