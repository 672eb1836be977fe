"""A whole dfs cluster on this host, on loopback: one metaserver, N chunk
servers and a mount, each process detached and recorded under one folder.

    DIR/cluster.json   addresses, replication, chunk size, mountpoint
    DIR/secret         the cluster secret
    DIR/meta/          metaserver data, log and pid
    DIR/cs1 .. csN/    chunk server data, logs and pids
    DIR/mount.log      the mount's log

Starting again on the same folder brings back the same cluster and data.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from . import mounts
from .config import CLUSTER_FILE, SECRET_FILE, ClusterRef, make_secret
from .errors import DfsError
from .mount import MountOptions, mount_background
from .ops import META
from .rpc import Client

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class ClusterLayout:
    meta: str
    chunkservers: list[str]
    replicas: int
    chunk_size: int
    mount: str = ""
    extra_args: dict = field(default_factory=dict)
    chunkserver_args: dict = field(default_factory=dict)


# A server started on it binds a free port and reports which (see `up`).
ANY_PORT = "127.0.0.1:0"


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"dfs" in cmdline or b"server" in cmdline else None


def _flags(args: dict) -> list[str]:
    return [part for key, value in args.items()
            for part in (f"--{key.replace('_', '-')}", str(value))]


class LocalCluster:
    def __init__(self, data_dir: str | Path, say=print):
        self.dir = Path(data_dir).resolve()
        self.say = say

    @property
    def layout_file(self) -> Path:
        return self.dir / CLUSTER_FILE

    def load(self) -> ClusterLayout | None:
        if not self.layout_file.exists():
            return None
        return ClusterLayout(**json.loads(self.layout_file.read_text()))

    def save(self, layout: ClusterLayout) -> None:
        tmp = self.layout_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(layout), indent=2) + "\n")
        tmp.rename(self.layout_file)

    def ref(self) -> ClusterRef:
        layout = self.load()
        secret_file = self.dir / SECRET_FILE
        return ClusterRef(layout.meta, secret_file.read_bytes().strip(), str(secret_file))

    # ---- up ---------------------------------------------------------------

    def up(self, mountpoint: str | None, chunkservers: int = 3, replicas: int = 2,
           chunk_size: int = 64 * 1024 * 1024, heartbeat_timeout: float | None = None,
           mount_options: MountOptions = MountOptions(),
           trash_hours: float | None = None,
           chunkserver_args: dict | None = None) -> ClusterLayout:
        self.dir.mkdir(parents=True, exist_ok=True)
        make_secret(self.dir / SECRET_FILE)
        layout = self.load()
        # A port picked here and bound later by the server could be taken in
        # between (an outgoing connection's local port, say): each server
        # binds its own the first time, and the layout keeps it for restarts.
        if layout is None:
            layout = ClusterLayout(meta=ANY_PORT, chunkservers=[ANY_PORT] * chunkservers,
                                   replicas=replicas, chunk_size=chunk_size)
            if heartbeat_timeout is not None:
                layout.extra_args["heartbeat_timeout"] = heartbeat_timeout
            if trash_hours:
                layout.extra_args["trash_hours"] = trash_hours
            layout.chunkserver_args.update(chunkserver_args or {})
        elif len(layout.chunkservers) < chunkservers:
            layout.chunkservers += [ANY_PORT] * (chunkservers - len(layout.chunkservers))
        self.save(layout)
        self.start_metaserver(layout)
        for i in range(len(layout.chunkservers)):
            self.start_chunkserver(layout, i)
        self.wait_for_chunkservers(len(layout.chunkservers))
        if mountpoint:
            layout.mount = os.path.realpath(mountpoint)
            self.save(layout)
            self.mount(layout.mount, mount_options)
        return layout

    def _spawn(self, name: str, command: list[str], folder: Path) -> str:
        """Start a server and return the address it listens on."""
        folder.mkdir(parents=True, exist_ok=True)
        ready = folder / "ready"
        ready.unlink(missing_ok=True)
        env = dict(os.environ, DFS_SECRET_FILE=str(self.dir / SECRET_FILE))
        env.pop("DFS_SECRET", None)
        with open(folder / "log", "ab") as log:
            proc = subprocess.Popen(command + ["--ready-file", str(ready)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, env=env)
        (folder / "pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if proc.poll() is not None:
                raise DfsError(5, f"{name} exited at start (code {proc.returncode}); "
                                  f"see {folder / 'log'}")
            if time.monotonic() > deadline:
                raise DfsError(110, f"{name} did not start in {START_TIMEOUT:.0f}s; "
                                    f"see {folder / 'log'}")
            time.sleep(0.05)
        addr = ready.read_text().strip()
        self.say(f"  {name} listening on {addr} (pid {proc.pid})")
        return addr

    def start_metaserver(self, layout: ClusterLayout) -> None:
        folder = self.dir / "meta"
        if _alive(folder / "pid"):
            return
        command = [sys.executable, "-m", "metaserver.main", "--listen", layout.meta,
                   "--data-dir", str(folder / "data"), "--replicas", str(layout.replicas),
                   "--chunk-size", str(layout.chunk_size)]
        layout.meta = self._spawn("metaserver", command + _flags(layout.extra_args), folder)
        self.save(layout)

    def start_chunkserver(self, layout: ClusterLayout, i: int) -> None:
        folder = self.dir / f"cs{i + 1}"
        if _alive(folder / "pid"):
            return
        command = [sys.executable, "-m", "chunkserver.main", "--listen", layout.chunkservers[i],
                   "--meta", layout.meta, "--data-dir", str(folder / "data")]
        layout.chunkservers[i] = self._spawn(f"chunk server {i + 1}",
                                             command + _flags(layout.chunkserver_args), folder)
        self.save(layout)

    def wait_for_chunkservers(self, count: int) -> None:
        ref = self.ref()

        async def poll():
            client = Client(ref.meta, ref.secret, META, retry_for=START_TIMEOUT)
            try:
                with trio.fail_after(START_TIMEOUT):
                    while True:
                        status = await client.call("status")
                        if sum(cs["alive"] for cs in status["chunkservers"]) >= count:
                            return
                        await trio.sleep(0.1)
            finally:
                await client.aclose()

        try:
            trio.run(poll)
        except trio.TooSlowError:
            raise DfsError(110, f"chunk servers did not register within {START_TIMEOUT:.0f}s; "
                                f"see the logs under {self.dir}") from None

    def mount(self, mountpoint: str, options: MountOptions = MountOptions()) -> None:
        Path(mountpoint).mkdir(parents=True, exist_ok=True)
        if mounts.is_mounted(mountpoint):
            if not mounts.is_broken(mountpoint):
                return
            mounts.unmount(mountpoint, lazy=True)
        mount_background(self.ref(), mountpoint, options, str(self.dir / "mount.log"))
        self.say(f"  mounted at {mountpoint}")

    # ---- down -------------------------------------------------------------

    def down(self) -> None:
        layout = self.load()
        if layout is None:
            return
        if layout.mount and mounts.is_mounted(layout.mount):
            try:
                mounts.unmount(layout.mount)
            except OSError:
                mounts.unmount(layout.mount, lazy=True)
            self.say(f"  unmounted {layout.mount}")
        folders = [self.dir / f"cs{i + 1}" for i in range(len(layout.chunkservers))]
        for folder in folders + [self.dir / "meta"]:
            self.stop(folder)

    def stop(self, folder: Path, sig: int = signal.SIGTERM) -> None:
        pid = _alive(folder / "pid")
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(folder / "pid") and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(folder / "pid"):
            os.kill(pid, signal.SIGKILL)
        self.say(f"  stopped {folder.name} (pid {pid})")
