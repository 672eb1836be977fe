"""The filesystems under test: each brings itself up, gives a folder to measure in,
names its processes (for CPU and memory accounting) and, where it has quotas, makes
and expands a volume."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks import csi, procs
from dfs.openfile import READ_CACHE_BYTES

MIB = 1024 * 1024


class Target:
    """A filesystem to measure. `up()` returns the folder the suites work in."""

    name = ""
    has_quota = False
    # How this target raises a volume's size online, for the written results.
    expands_with = "nothing (no quota)"
    # False: mounted without extended attributes (run --no-xattrs), where the
    # target can be; the local folder cannot.
    xattrs = True

    def __init__(self, work: Path):
        self.work = work / self.name
        self.root = self.work / "mnt"

    def up(self) -> Path:
        raise NotImplementedError

    def down(self) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        """Stop this target's processes, keeping its data, so that they cost
        nothing while another target is measured (`run --isolate`)."""

    def resume(self) -> None:
        """Start the processes `pause` stopped, on the same data and mount point."""

    def processes(self) -> dict[str, list[int]]:
        """Processes serving this filesystem by role (client, master, chunkserver)."""
        return {}

    def memory_bounds(self) -> dict[str, float]:
        """The peak resident MiB this target promises for each role of `processes()`
        while one file is written and read back, whatever its size (the memory
        suite holds it to them). None promised: judged by growth alone."""
        return {}

    def log_files(self) -> list[Path]:
        """The logs of this target's own processes, kept with the results of a failed run."""
        if not self.work.exists():
            return []
        # Never walk the mount itself: it may be large, or dead after a crash.
        tops = [p for p in self.work.iterdir() if p != self.root]
        return sorted(log for top in tops
                      for log in ([top] if top.is_file() else top.glob("**/*.log"))
                      if log.suffix == ".log")

    def make_volume(self, name: str, size: int) -> Path:
        path = self.root / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def expand_volume(self, name: str, size: int) -> None:
        """Raise the volume's quota online; targets without quotas have nothing to raise."""

    def remove_volume(self, name: str) -> None:
        shutil.rmtree(self.root / "volumes" / name, ignore_errors=True)


class Local(Target):
    """A plain folder on the local disk: the ceiling."""

    name = "local"

    def up(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def down(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class FusePass(Target):
    """bindfs, a C FUSE passthrough over a local folder: the floor cost of any FUSE mount."""

    name = "fusepass"

    def __init__(self, work: Path):
        super().__init__(work)
        self.proc = None

    def up(self) -> Path:
        (self.work / "source").mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        if shutil.which("bindfs") is None:
            raise procs.BenchError("bindfs is not installed: apt-get install -y bindfs")
        self.resume()
        return self.root

    def resume(self) -> None:
        xattrs = [] if self.xattrs else ["--xattr-none"]
        self.proc = subprocess.Popen(["bindfs", "-f", *xattrs, str(self.work / "source"),
                                      str(self.root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.wait_for(lambda: procs.is_mounted(self.root) or self.proc.poll() is not None,
                       15, f"bindfs to mount {self.root}")
        if self.proc.poll() is not None:
            raise procs.BenchError(f"bindfs exited with {self.proc.returncode} before mounting")

    def pause(self) -> None:
        procs.unmount(self.root)
        if self.proc:
            procs.stop_process(self.proc)
        self.proc = None

    def down(self) -> None:
        self.pause()
        shutil.rmtree(self.work, ignore_errors=True)

    def processes(self) -> dict[str, list[int]]:
        return {"client": [self.proc.pid]} if self.proc else {}


def dfs_command() -> str:
    """The `dfs` command of the interpreter running us (the project's venv), else PATH's."""
    beside = Path(sys.executable).parent / "dfs"
    found = str(beside) if beside.exists() else shutil.which("dfs")
    if not found:
        raise procs.BenchError("the dfs command is not installed: pip install -e . in the "
                               "repository (see benchmarks/README.md)")
    return found


class Dfs(Target):
    """A local dfs cluster from `dfs up`: one metaserver, three chunk servers, replication 2.
    Volumes come from its CSI controller when the plugin is installed, else from
    `dfs quota set` on a folder under /volumes."""

    name = "dfs"
    has_quota = True
    chunkservers = 3
    replicas = 2
    # The stated bounds, worked out under "memory" in benchmarks/README.md: a
    # client's memory besides its read cache, and a chunk server's with one mount
    # writing to it.
    CLIENT_BESIDES_READ_CACHE_MIB = 134
    CHUNKSERVER_MIB = 175

    def __init__(self, work: Path):
        super().__init__(work)
        self.data = self.work / "data"
        self.csi = None
        self.volume_ids: dict[str, str] = {}
        self.expands_with = "dfs quota set"
        # MiB of read cache for the mount (dfs up --read-cache); None: the default.
        self.read_cache_mib: int | None = None
        # Mounted with --async-dirops.
        self.async_dirops = False

    def up(self) -> Path:
        self.data.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.resume()
        return self.root

    def resume(self) -> None:
        """`dfs up` keeps an existing cluster's data, so this also starts one again."""
        cache = [] if self.read_cache_mib is None else ["--read-cache", str(self.read_cache_mib)]
        xattrs = [] if self.xattrs else ["--no-xattrs"]
        ahead = ["--async-dirops"] if self.async_dirops else []
        procs.run([dfs_command(), "up", "--data-dir", str(self.data), "--mount", str(self.root),
                   "--chunkservers", str(self.chunkservers), "--replicas", str(self.replicas),
                   *cache, *xattrs, *ahead], timeout=60)
        if csi.available():
            meta = json.loads((self.data / "cluster.json").read_text())["meta"]
            self.csi = csi.CsiController(meta, self.data / "secret", self.work / "csi")
            self.csi.start()
            self.expands_with = "CSI ControllerExpandVolume"

    def pause(self) -> None:
        if self.csi:
            self.csi.stop()
            self.csi = None
        procs.run([dfs_command(), "down", "--data-dir", str(self.data)], timeout=60)

    def down(self) -> None:
        try:
            self.pause()
        finally:
            procs.unmount(self.root)
            for pid in self._pids():
                procs.signal_process(pid, signal.SIGTERM)
            shutil.rmtree(self.work, ignore_errors=True)

    def _pids(self) -> list[int]:
        return sorted({*procs.pids_matching(str(self.data)), *procs.pids_matching(str(self.root))})

    def processes(self) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = {}
        for pid in self._pids():
            line = procs.cmdline(pid)
            role = ("metaserver" if "metaserver" in line
                    else "chunkserver" if "chunkserver" in line
                    else "csi" if "dfs-csi" in line else "client")
            roles.setdefault(role, []).append(pid)
        return roles

    def memory_bounds(self) -> dict[str, float]:
        cache = (READ_CACHE_BYTES // MIB if self.read_cache_mib is None
                 else self.read_cache_mib)
        return {"client": self.CLIENT_BESIDES_READ_CACHE_MIB + cache,
                "chunkserver": self.CHUNKSERVER_MIB}

    def _volume_path(self, name: str) -> Path:
        return self.root / "volumes" / self.volume_ids.get(name, name)

    def make_volume(self, name: str, size: int) -> Path:
        if not self.csi:
            path = super().make_volume(name, size)
            self.expand_volume(name, size)
            return path
        self.volume_ids[name] = self.csi.create_volume(name, size)
        path = self._volume_path(name)
        procs.wait_for(path.exists, 10, f"CSI volume {name} to appear at {path}")
        return path

    def expand_volume(self, name: str, size: int) -> None:
        if self.csi:
            self.csi.expand_volume(self.volume_ids[name], size)
        else:
            procs.run([dfs_command(), "quota", "set", f"/volumes/{name}", "--bytes", str(size),
                       "--data-dir", str(self.data)], timeout=30)

    def remove_volume(self, name: str) -> None:
        shutil.rmtree(self._volume_path(name), ignore_errors=True)
        if self.csi and name in self.volume_ids:
            self.csi.delete_volume(self.volume_ids.pop(name))
