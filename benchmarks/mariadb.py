"""A private MariaDB server for one benchmark: its own data folder, socket and port,
started and stopped by the runner and never the system's instance."""

import shutil
import socket
import subprocess
from pathlib import Path

from benchmarks import procs

SERVER_OPTIONS = [
    "--innodb-buffer-pool-size=256M",
    # fsync is what every filesystem here supports; O_DIRECT is not a given on FUSE.
    "--innodb-flush-method=fsync",
    "--innodb-use-native-aio=0",
    "--skip-name-resolve",
    "--max-connections=64",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MariaDB:
    def __init__(self, datadir: Path, rundir: Path):
        self.datadir = datadir
        self.rundir = rundir
        self.socket_dir = procs.socket_folder("dfsb-mariadb-")
        self.socket = self.socket_dir / "mysqld.sock"
        self.port = _free_port()
        self.proc = None

    @property
    def client_args(self) -> list[str]:
        return [f"--socket={self.socket}", "--user=root"]

    def start(self) -> None:
        for tool in ("mariadb-install-db", "mariadbd", "mariadb", "mariadb-admin"):
            if shutil.which(tool) is None:
                raise procs.BenchError(f"{tool} is not installed: apt-get install -y "
                                       "mariadb-server mariadb-client")
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.rundir.mkdir(parents=True, exist_ok=True)
        procs.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                   "--user=root", "--auth-root-authentication-method=socket",
                   "--skip-test-db", *SERVER_OPTIONS], timeout=300)
        log = self.rundir / "mariadb.err"
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root",
             f"--pid-file={self.rundir / 'mysqld.pid'}", f"--log-error={log}",
             f"--tmpdir={self.rundir}", *SERVER_OPTIONS],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.wait_for(self._answers, 120, f"MariaDB on {self.socket} (log: {log})", interval=0.3)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            log = self.rundir / "mariadb.err"
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            errors = [line for line in lines if "[ERROR]" in line][:10]
            raise procs.BenchError(f"mariadbd exited with {self.proc.returncode}; its errors:\n"
                                   + "\n".join(errors or lines[-10:]))
        return subprocess.run(["mariadb-admin", *self.client_args, "ping"],
                              capture_output=True).returncode == 0

    def sql(self, statement: str, timeout: float = 60) -> str:
        return procs.run(["mariadb", *self.client_args, "--batch", "--skip-column-names",
                          "-e", statement], timeout=timeout).stdout

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                subprocess.run(["mariadb-admin", *self.client_args, "shutdown"],
                               capture_output=True, timeout=120)
            procs.stop_process(self.proc, timeout=60)
            self.proc = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)
