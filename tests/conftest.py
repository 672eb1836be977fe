"""Fixtures that run real clusters: real processes on loopback, real FUSE mounts.

Every fixture tears down what it started even when the test fails: it unmounts
(lazily as a last resort) and stops the processes.
"""

import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from dfs import mounts
from dfs.cluster import LocalCluster

TEST_CHUNK_SIZE = 1024 * 1024

# The processes the tests start (servers, mounts, the dfs command) import the
# checkout under test as the tests do, not the one the virtualenv was installed
# from (a git worktree may share another checkout's virtualenv).
ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


class Cluster:
    """A local cluster started for tests, with helpers to add mounts."""

    def __init__(self, base: Path, chunkservers: int = 3, replicas: int = 2,
                 chunk_size: int = TEST_CHUNK_SIZE, **extra):
        self.base = base
        self.local = LocalCluster(base / "data", say=lambda *_: None)
        self.mnt = base / "mnt"
        self.extra_mounts: list[Path] = []
        self.args = (chunkservers, replicas, chunk_size)
        self.extra = extra

    def up(self) -> "Cluster":
        chunkservers, replicas, chunk_size = self.args
        self.local.up(str(self.mnt), chunkservers, replicas, chunk_size, **self.extra)
        return self

    @property
    def ref(self):
        return self.local.ref()

    @property
    def cli_args(self) -> list[str]:
        return ["--data-dir", str(self.local.dir)]

    def dfs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        dfs_bin = shutil.which("dfs") or str(Path(os.sys.executable).parent / "dfs")
        return subprocess.run([dfs_bin, *args], capture_output=True, text=True, check=check,
                              timeout=120)

    def mount(self, subdir: str = "/", *options: str) -> Path:
        path = self.base / f"mnt-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        self.extra_mounts.append(path)
        self.dfs("mount", *self.cli_args, "--subdir", subdir, *options,
                 "--log-file", str(path) + ".log", str(path))
        return path

    @contextmanager
    def extra_mount(self, subdir: str = "/"):
        """Another mount of this cluster for the length of a `with` block."""
        path = self.mount(subdir)
        try:
            yield path
        finally:
            self.unmount(path)

    def unmount(self, path: Path) -> None:
        """Unmount a mount of this cluster, lazily if it is still busy."""
        if mounts.is_mounted(str(path)):
            try:
                mounts.unmount(str(path))
            except OSError:
                mounts.unmount(str(path), lazy=True)

    def teardown(self) -> None:
        for path in self.extra_mounts + [self.mnt]:
            self.unmount(path)
        try:
            self.local.down()
        finally:
            for folder in self.local.dir.glob("*"):
                if (folder / "pid").exists():
                    self.local.stop(folder, sig=9)


def start_cluster(base: Path, **options) -> Cluster:
    cluster = Cluster(base, **options)
    try:
        return cluster.up()
    except BaseException:
        cluster.teardown()
        raise


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory):
    """One cluster for the tests that only need a working filesystem."""
    cluster = start_cluster(tmp_path_factory.mktemp("shared"))
    yield cluster
    cluster.teardown()


@pytest.fixture
def mnt(shared_cluster, request) -> Path:
    """A fresh empty folder on the shared cluster's mount, for one test."""
    path = shared_cluster.mnt / f"{request.node.name[:60]}-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    return path


@pytest.fixture
def cluster(tmp_path):
    """A cluster of the test's own, for tests that stop, kill or restart parts."""
    cluster = start_cluster(tmp_path)
    yield cluster
    cluster.teardown()
