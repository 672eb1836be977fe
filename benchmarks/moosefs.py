"""MooseFS baseline: one master and three chunk servers at goal 2, the shape of dfs's
local cluster.

MooseFS's master refuses chunk servers on 127.0.0.0/8, so its servers run in a network
namespace joined to this host by a veth pair on a private /30; the client (mfsmount)
stays on the host and reaches them through the pair. Nothing leaves the machine.
"""

import os
import shutil
import socket
import subprocess
from pathlib import Path

from benchmarks import procs
from benchmarks.targets import Target

SUBNETS = "10.213"      # each run takes a free /30 inside 10.213.0.0/16
PREFIX = 30
CLIENT_PORT = 9421
EMPTY_METADATA = Path("/var/lib/mfs/metadata.mfs.empty")
GOAL = 2
CHUNKSERVERS = 3
LEAVE_SPACE = 1 << 30
SERVER_ROLES = {"mfsmaster": "master", "mfschunkserver": "chunkserver"}


def _free_pair() -> tuple[str, str]:
    """Host and namespace addresses of a /30 no interface on this host uses yet."""
    taken = procs.run(["ip", "-o", "-4", "addr", "show"], timeout=10).stdout
    for third in range(256):
        for fourth in range(0, 256, 4):
            if f"{SUBNETS}.{third}.{fourth + 1}/" not in taken:
                return f"{SUBNETS}.{third}.{fourth + 1}", f"{SUBNETS}.{third}.{fourth + 2}"
    raise procs.BenchError(f"no free /30 left in {SUBNETS}.0.0/16 for MooseFS")


class Namespace:
    """The network namespace and veth pair the MooseFS servers live behind, named after
    this process so that two runs never share or remove each other's."""

    def __init__(self):
        self.name = f"dfsbench-{os.getpid()}"
        self.host_if, self.ns_if = f"dfsb{os.getpid()}h", f"dfsb{os.getpid()}n"
        self.host_addr = self.ns_addr = ""

    def up(self) -> None:
        self.host_addr, self.ns_addr = _free_pair()
        inside = ["ip", "netns", "exec", self.name]
        for cmd in (["ip", "netns", "add", self.name],
                    ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
                    ["ip", "link", "set", self.ns_if, "netns", self.name],
                    ["ip", "addr", "add", f"{self.host_addr}/{PREFIX}", "dev", self.host_if],
                    ["ip", "link", "set", self.host_if, "up"],
                    [*inside, "ip", "addr", "add", f"{self.ns_addr}/{PREFIX}", "dev", self.ns_if],
                    [*inside, "ip", "link", "set", self.ns_if, "up"],
                    [*inside, "ip", "link", "set", "lo", "up"]):
            procs.run(cmd, timeout=10)

    def down(self) -> None:
        """Remove the pair and the namespace; deleting one end of a veth removes both."""
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def pids(self) -> list[int]:
        """The processes running in the namespace (none once it is removed)."""
        found = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                               text=True)
        return [int(pid) for pid in found.stdout.split()]

    def spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd],
                                    stdout=out, stderr=subprocess.STDOUT)


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _total_space(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def _write_cfg(path: Path, settings: dict) -> Path:
    path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
    return path


class MooseFS(Target):
    name = "moosefs"
    has_quota = True
    expands_with = "mfssetquota -L (hard length quota)"

    def __init__(self, work: Path):
        super().__init__(work)
        self.netns = Namespace()
        self.servers: list[subprocess.Popen] = []
        self.master = None
        self.mount = None

    def up(self) -> Path:
        for tool in ("mfsmaster", "mfschunkserver", "mfsmount"):
            if shutil.which(tool) is None:
                raise procs.BenchError(
                    f"{tool} is not installed: apt-get install -y moosefs-master "
                    "moosefs-chunkserver moosefs-client")
        self.work.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        self.netns.up()
        data = self.work / "master"
        data.mkdir(exist_ok=True)
        shutil.copy(EMPTY_METADATA, data / "metadata.mfs")
        self.resume()
        procs.run(["mfssetgoal", "-r", str(GOAL), str(self.root)], timeout=30)
        return self.root

    def resume(self) -> None:
        """Start the master (on the metadata it saved when it stopped), the chunk
        servers and the mount."""
        self._start_master()
        for index in range(CHUNKSERVERS):
            self._start_chunkserver(index)
        self._mount()

    def pause(self) -> None:
        procs.unmount(self.root)
        if self.mount:
            procs.stop_process(self.mount)
        self.mount = None
        # The master last: it writes its metadata out as it stops.
        for proc in reversed(self.servers):
            procs.stop_process(proc, timeout=30)
        self.servers.clear()
        self.master = None

    def _start_master(self) -> None:
        addr = self.netns.ns_addr
        data = self.work / "master"
        exports = self.work / "mfsexports.cfg"
        exports.write_text(f"{self.netns.host_addr}/32 / rw,alldirs,admin,maproot=0:0\n")
        topology = self.work / "mfstopology.cfg"
        topology.write_text("")
        cfg = _write_cfg(self.work / "mfsmaster.cfg", {
            "WORKING_USER": "root", "WORKING_GROUP": "root", "DATA_PATH": data,
            "EXPORTS_FILENAME": exports, "TOPOLOGY_FILENAME": topology,
            "MATOML_LISTEN_HOST": addr, "MATOCS_LISTEN_HOST": addr,
            "MATOCL_LISTEN_HOST": addr, "MATOCL_LISTEN_PORT": CLIENT_PORT,
            # Replicate at once: the default waits 60 s after start before it replicates.
            "REPLICATIONS_DELAY_INIT": 0})
        self.master = self.netns.spawn(["mfsmaster", "-f", "-c", str(cfg)],
                                       self.work / "master.log")
        self.servers.append(self.master)
        procs.wait_for(lambda: _accepts(addr, CLIENT_PORT) or self.master.poll() is not None,
                       30, f"mfsmaster to listen on {addr}:{CLIENT_PORT}")
        if self.master.poll() is not None:
            raise procs.BenchError(f"mfsmaster exited with {self.master.returncode}; see "
                                   f"{self.work / 'master.log'}")

    def _start_chunkserver(self, index: int) -> None:
        addr = self.netns.ns_addr
        data = self.work / f"chunkserver{index}"
        hdd = data / "hdd"
        hdd.mkdir(parents=True, exist_ok=True)
        hdd_cfg = data / "mfshdd.cfg"
        hdd_cfg.write_text(f"{hdd}\n")
        cfg = _write_cfg(data / "mfschunkserver.cfg", {
            "WORKING_USER": "root", "WORKING_GROUP": "root", "DATA_PATH": data,
            "HDD_CONF_FILENAME": hdd_cfg, "MASTER_HOST": addr, "BIND_HOST": addr,
            "CSSERV_LISTEN_HOST": addr, "CSSERV_LISTEN_PORT": 9422 + index,
            "HDD_LEAVE_SPACE_DEFAULT": LEAVE_SPACE})
        self.servers.append(self.netns.spawn(["mfschunkserver", "-f", "-c", str(cfg)],
                                             self.work / f"chunkserver{index}.log"))

    def _mount(self) -> None:
        with open(self.work / "mount.log", "ab") as log:
            self.mount = subprocess.Popen(
                ["mfsmount", "-f", str(self.root), "-H", self.netns.ns_addr,
                 "-P", str(CLIENT_PORT), *([] if self.xattrs else ["-o", "mfsnoxattrs"])],
                stdout=log, stderr=subprocess.STDOUT)
        procs.wait_for(lambda: procs.is_mounted(self.root) or self.mount.poll() is not None,
                       30, f"mfsmount at {self.root}")
        if self.mount.poll() is not None:
            raise procs.BenchError(f"mfsmount exited with {self.mount.returncode}; see "
                                   f"{self.work / 'mount.log'}")
        # The mount answers before the chunk servers have registered, and each adds its
        # disk (used plus available, less the space it leaves free) to the total once it has.
        disk = os.statvfs(self.work)
        per_server = disk.f_frsize * (disk.f_blocks - disk.f_bfree + disk.f_bavail) - LEAVE_SPACE
        procs.wait_for(lambda: _total_space(self.root) >= (CHUNKSERVERS - 0.5) * per_server,
                       60, f"{CHUNKSERVERS} MooseFS chunk servers to register", interval=0.5)

    def down(self) -> None:
        self.pause()
        self.netns.down()

    def processes(self) -> dict[str, list[int]]:
        """The servers are whatever runs in the namespace, found afresh each time, so
        one that outlived a pause still counts (run --isolate waits for none)."""
        roles: dict[str, list[int]] = {}
        if self.mount and self.mount.poll() is None:
            roles["client"] = [self.mount.pid]
        for pid in self.netns.pids():
            role = SERVER_ROLES.get(procs.cmdline(pid).split(" ", 1)[0])
            if role:
                roles.setdefault(role, []).append(pid)
        return roles

    def make_volume(self, name: str, size: int) -> Path:
        path = super().make_volume(name, size)
        self.expand_volume(name, size)
        return path

    def expand_volume(self, name: str, size: int) -> None:
        procs.run(["mfssetquota", "-L", str(size), str(self.root / "volumes" / name)],
                  timeout=30)
