"""dfs-csi driven over its unix socket the way Kubernetes drives it.

A real local cluster (`dfs up`), the real plugin process (`dfs-csi --mode
all`) and real FUSE and bind mounts in temporary folders: the provisioner's
CreateVolume, the attacher's ControllerPublishVolume, kubelet's NodeStage and
NodePublish, a process writing into the target while the volume grows, and
every RPC's error answers.
"""

import errno
import json
import mmap
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from csi_plugin import csi_pb2 as csi
from csi_plugin import csi_pb2_grpc
from faults import processes_mentioning
from test_metrics import free_port, scrape

pytestmark = pytest.mark.timeout(120)

BIN = Path(sys.executable).parent
MiB = 1 << 20
Mode = csi.VolumeCapability.AccessMode
Code = grpc.StatusCode
NODE = "node-a"
OTHER_NODE = "node-b"


def run(argv, timeout=120):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def mounts_under(base: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return [p for p in points if p.startswith(str(base) + "/")]


def release_mounts(base: Path) -> None:
    """Unmount everything under `base`, deepest first, and end the FUSE
    processes the plugin left serving them (their command lines name `base`)."""
    for point in sorted(mounts_under(base), key=len, reverse=True):
        run(["umount", "-l", point], timeout=30)
    for pid in processes_mentioning(str(base)):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@dataclass
class Cluster:
    meta: str
    secret_file: Path
    mount: Path
    base: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("csi")
    data, mnt = base / "cluster", base / "mnt"
    mnt.mkdir()
    try:
        up = run([BIN / "dfs", "up", "--data-dir", data, "--mount", mnt, "--chunkservers", 2,
                  "--replicas", 2, "--chunk-size", MiB])
        if up.returncode:
            pytest.fail(f"dfs up failed: {up.stdout}{up.stderr}")
        info = json.loads((data / "cluster.json").read_text())
        yield Cluster(info["meta"], data / "secret", mnt, base)
    finally:
        for folder in ("node", "split-node", "split-controller", OTHER_NODE):
            release_mounts(base / folder)
        run([BIN / "dfs", "down", "--data-dir", data])
        release_mounts(base)


class Plugin:
    """The dfs-csi process and stubs on its socket; restartable."""

    def __init__(self, cluster: Cluster, mode="all", node_id=NODE, folder="node"):
        self.cluster = cluster
        self.mode = mode
        self.node_id = node_id
        self.dir = cluster.base / folder
        self.dir.mkdir(exist_ok=True)
        self.socket = self.dir / "csi.sock"
        self.log = self.dir / "plugin.log"
        self.proc = None
        self.metrics_port = free_port()

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "dfs-csi"), "--endpoint", f"unix://{self.socket}",
                 "--meta", self.cluster.meta, "--secret-file", str(self.cluster.secret_file),
                 "--node-id", self.node_id, "--mode", self.mode,
                 "--state-dir", str(self.dir / "state"),
                 *(["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
                   if self.mode != "controller" else []),
                 "--log-level", "debug"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.identity.Probe(csi.ProbeRequest(), timeout=5).ready.value:
                    return
            except grpc.RpcError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dfs-csi did not become ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.channel.close()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def plugin(cluster):
    p = Plugin(cluster)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def cap(mode=Mode.SINGLE_NODE_WRITER, flags=()):
    return csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(mount_flags=list(flags)),
                                access_mode=Mode(mode=mode))


def code(call, request) -> Code:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=60)
    return info.value.code()


class Volume:
    """One volume taken through the Kubernetes sequence by a test."""

    def __init__(self, plugin: Plugin, name: str, size: int, mode=Mode.SINGLE_NODE_WRITER,
                 parameters: dict | None = None, source: csi.VolumeContentSource | None = None):
        self.plugin = plugin
        self.cap = cap(mode)
        self.volume = plugin.controller.CreateVolume(csi.CreateVolumeRequest(
            name=name, volume_capabilities=[self.cap], parameters=parameters or {},
            capacity_range=csi.CapacityRange(required_bytes=size),
            volume_content_source=source), timeout=60).volume
        self.id = self.volume.volume_id
        self.staging = plugin.dir / "staging" / self.id
        self.staging.mkdir(parents=True, exist_ok=True)
        self.targets: list[Path] = []
        self.publish_context = {}

    def attach(self, node=NODE, readonly=False):
        answer = self.plugin.controller.ControllerPublishVolume(
            csi.ControllerPublishVolumeRequest(
                volume_id=self.id, node_id=node, volume_capability=self.cap, readonly=readonly,
                volume_context=self.volume.volume_context), timeout=60)
        self.publish_context = answer.publish_context
        return answer

    def stage(self):
        return self.plugin.node.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging),
            volume_capability=self.cap, publish_context=self.publish_context,
            volume_context=self.volume.volume_context), timeout=60)

    def publish(self, pod: str, readonly=False) -> Path:
        target = self.plugin.dir / "pods" / pod / "mount"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.plugin.node.NodePublishVolume(csi.NodePublishVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging), target_path=str(target),
            volume_capability=self.cap, readonly=readonly, publish_context=self.publish_context,
            volume_context=self.volume.volume_context), timeout=60)
        self.targets.append(target)
        return target

    def expand(self, size: int):
        return self.plugin.controller.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
            volume_id=self.id, capacity_range=csi.CapacityRange(required_bytes=size)),
            timeout=60)

    def stats(self, path: Path):
        return self.plugin.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(
            volume_id=self.id, volume_path=str(path), staging_target_path=str(self.staging)),
            timeout=60)

    def unmount(self) -> None:
        """What kubelet does when the volume's last pod leaves the node."""
        for target in self.targets:
            self.plugin.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(
                volume_id=self.id, target_path=str(target)), timeout=60)
            assert not target.exists(), "NodeUnpublishVolume must remove the target path"
        self.plugin.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging)), timeout=60)
        assert str(self.staging) not in mounts_under(self.plugin.dir)

    @contextmanager
    def published(self, pod: str):
        """Attached, staged and published to `pod` (its path) for a `with`
        block, then taken down and deleted."""
        self.attach()
        self.stage()
        try:
            yield self.publish(pod)
        finally:
            self.teardown()

    def teardown(self) -> None:
        self.unmount()
        self.plugin.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
            volume_id=self.id, node_id=NODE), timeout=60)
        self.plugin.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=self.id),
                                            timeout=60)


def usage(stats, unit):
    return next(u for u in stats.usage if u.unit == unit)


def df_size(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


WRITER = """
import os, sys, time
path, total = sys.argv[1], int(sys.argv[2])
block = b"w" * 65536
with open(path, "wb") as f:
    written = 0
    while written < total:
        f.write(block)
        f.flush()
        os.fsync(f.fileno())
        written += len(block)
        time.sleep(0.005)
print(written)
"""


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_identity(plugin):
    info = plugin.identity.GetPluginInfo(csi.GetPluginInfoRequest())
    assert info.name == "dfs.csi.dfs.io" and info.vendor_version
    found = plugin.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest())
    services = {c.service.type for c in found.capabilities if c.HasField("service")}
    expansion = {c.volume_expansion.type for c in found.capabilities
                 if c.HasField("volume_expansion")}
    assert services == {csi.PluginCapability.Service.CONTROLLER_SERVICE}
    assert expansion == {csi.PluginCapability.VolumeExpansion.ONLINE}
    assert plugin.identity.Probe(csi.ProbeRequest()).ready.value


@pytest.mark.parametrize("mode", ["controller", "node"])
def test_split_modes_serve_only_their_services(cluster, mode):
    split = Plugin(cluster, mode=mode, node_id="node-split", folder=f"split-{mode}")
    split.start()
    try:
        found = split.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest())
        services = {c.service.type for c in found.capabilities if c.HasField("service")}
        controller_call = (split.controller.ControllerGetCapabilities,
                           csi.ControllerGetCapabilitiesRequest())
        node_call = (split.node.NodeGetInfo, csi.NodeGetInfoRequest())
        if mode == "controller":
            assert services == {csi.PluginCapability.Service.CONTROLLER_SERVICE}
            assert controller_call[0](controller_call[1]).capabilities
            assert code(*node_call) == Code.UNIMPLEMENTED
        else:
            assert services == set()
            assert node_call[0](node_call[1]).node_id == "node-split"
            assert code(*controller_call) == Code.UNIMPLEMENTED
            assert (cluster.mount / ".dfs-csi" / "nodes" / "node-split").is_dir()
    finally:
        split.stop()


def test_lifecycle_with_online_expansion_while_writing(plugin):
    vol = Volume(plugin, "pvc-online-grow", 8 * MiB)
    assert vol.volume.capacity_bytes == 8 * MiB
    vol.attach()
    vol.stage()
    target = vol.publish("db")
    assert df_size(target) == 8 * MiB

    data = target / "table.ibd"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(data), str(12 * MiB)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: data.exists() and data.stat().st_size >= 2 * MiB, 60,
                 "the writer to write 2 MiB")
        grown = vol.expand(16 * MiB)
        assert grown.capacity_bytes == 16 * MiB and not grown.node_expansion_required
        node_grown = plugin.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(
            volume_id=vol.id, volume_path=str(target), staging_target_path=str(vol.staging),
            capacity_range=csi.CapacityRange(required_bytes=16 * MiB)))
        assert node_grown.capacity_bytes == 16 * MiB
        assert df_size(target) == 16 * MiB, "df in the pod must show the new size at once"
        assert writer.poll() is None, "the writer must still be running: no pause, no unmount"
        out, err = writer.communicate(timeout=90)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, err
    assert int(out) == 12 * MiB and data.stat().st_size == 12 * MiB

    stats = vol.stats(target)
    assert usage(stats, csi.VolumeUsage.BYTES).total == 16 * MiB
    assert usage(stats, csi.VolumeUsage.BYTES).used >= 12 * MiB
    assert usage(stats, csi.VolumeUsage.INODES).used >= 1
    assert not stats.volume_condition.abnormal

    vol.teardown()
    listed = plugin.controller.ListVolumes(csi.ListVolumesRequest())
    assert vol.id not in [e.volume.volume_id for e in listed.entries]
    assert code(plugin.controller.ControllerGetVolume,
                csi.ControllerGetVolumeRequest(volume_id=vol.id)) == Code.NOT_FOUND


def test_read_cache_parameter_and_node_zone_shape_the_mount_on_the_node(plugin):
    vol = Volume(plugin, "pvc-read-cache", 8 * MiB, parameters={"readCacheMiB": "128"})
    assert vol.volume.volume_context["readCacheMiB"] == "128"
    with vol.published("reader") as target:
        (target / "page").write_bytes(b"kept by a larger cache")
        [mount_pid] = [pid for pid in processes_mentioning(str(vol.staging))
                       if "dfs.mount" in Path(f"/proc/{pid}/cmdline").read_text()]
        argv = Path(f"/proc/{mount_pid}/cmdline").read_text().split("\0")
        assert argv[argv.index("--read-cache") + 1] == "128"
        # In the node's zone, the zone its chunk servers are given (node_zone).
        assert argv[argv.index("--zone") + 1] == NODE
        assert (target / "page").read_bytes() == b"kept by a larger cache"


def test_the_node_serves_every_volume_s_mount_metrics(plugin):
    vol = Volume(plugin, "pvc-metrics", 8 * MiB)
    with vol.published("watched") as target:
        (target / "data").write_bytes(b"counted" * 1000)
        samples = scrape(plugin.metrics_port)
        mine = 'volume_id="pvc-metrics"'
        assert samples[f"dfs_csi_mount_up{{{mine}}}"] == 1
        assert samples[f'dfs_fuse_requests_total{{{mine},op="create",result="ok"}}'] == 1
        assert samples[f"dfs_fuse_written_bytes_total{{{mine}}}"] == 7000
        assert samples[f'dfs_fuse_request_seconds_count{{{mine},op="write"}}'] >= 1
    assert not any("pvc-metrics" in name for name in scrape(plugin.metrics_port))


def test_xattrs_parameter_false_mounts_the_volume_without_them(plugin):
    vol = Volume(plugin, "pvc-no-xattrs", 8 * MiB, parameters={"xattrs": "false"})
    assert vol.volume.volume_context["xattrs"] == "false"
    with vol.published("db") as target:
        (target / "table").write_bytes(b"rows")
        with pytest.raises(OSError) as refused:
            os.setxattr(target / "table", "user.color", b"blue")
        assert refused.value.errno == errno.EOPNOTSUPP
        assert (target / "table").read_bytes() == b"rows"


def write_bytes(path: Path, count: int, mode="wb") -> None:
    with open(path, mode) as f:
        for _ in range(count // (256 * 1024)):
            f.write(b"q" * (256 * 1024))
            f.flush()
        os.fsync(f.fileno())


def test_write_past_quota_gets_edquot_then_expand_and_write_again(plugin):
    vol = Volume(plugin, "pvc-quota", 4 * MiB)
    vol.attach()
    vol.stage()
    target = vol.publish("quota")
    with pytest.raises(OSError) as info:
        write_bytes(target / "big", 6 * MiB)
    assert info.value.errno == errno.EDQUOT
    vol.expand(16 * MiB)
    assert df_size(target) == 16 * MiB
    write_bytes(target / "big", 6 * MiB)
    write_bytes(target / "more", 4 * MiB)
    assert (target / "big").stat().st_size == 6 * MiB
    vol.teardown()


def test_readonly_publish_refuses_writes(plugin):
    vol = Volume(plugin, "pvc-readonly", 4 * MiB, mode=Mode.SINGLE_NODE_MULTI_WRITER)
    vol.attach()
    vol.stage()
    writable = vol.publish("writer")
    (writable / "seed").write_text("seed")
    readonly = vol.publish("reader", readonly=True)
    assert (readonly / "seed").read_text() == "seed"
    with pytest.raises(OSError) as info:
        (readonly / "nope").write_text("x")
    assert info.value.errno == errno.EROFS
    vol.teardown()

    # Attached read-only by the controller: the node mounts it read-only even
    # when kubelet's own flag says read-write.
    attached_ro = Volume(plugin, "pvc-attached-ro", 4 * MiB)
    attached_ro.attach(readonly=True)
    attached_ro.stage()
    target = attached_ro.publish("attached-ro")
    with pytest.raises(OSError) as info:
        (target / "nope").write_text("x")
    assert info.value.errno == errno.EROFS
    attached_ro.teardown()


def test_every_call_is_idempotent(plugin):
    vol = Volume(plugin, "pvc-twice", 4 * MiB)
    again = plugin.controller.CreateVolume(csi.CreateVolumeRequest(
        name="pvc-twice", volume_capabilities=[vol.cap],
        capacity_range=csi.CapacityRange(required_bytes=4 * MiB)))
    assert again.volume == vol.volume
    for _ in range(2):
        vol.attach()
    for _ in range(2):
        vol.stage()
    target = vol.publish("twice")
    vol.targets.clear()
    assert vol.publish("twice") == target
    (target / "file").write_text("kept")
    vol.teardown()
    vol.teardown()


def test_list_volumes_pages_survive_deletion(plugin):
    ids = [Volume(plugin, f"pvc-page-{i}", MiB).id for i in range(5)]
    seen, token, deleted = [], "", False
    while True:
        page = plugin.controller.ListVolumes(csi.ListVolumesRequest(max_entries=2,
                                                                    starting_token=token))
        assert len(page.entries) <= 2
        seen += [e.volume.volume_id for e in page.entries]
        token = page.next_token
        if not token:
            break
        if not deleted:
            # Delete the last volume of the first page: its token must still work.
            plugin.controller.DeleteVolume(csi.DeleteVolumeRequest(
                volume_id=page.entries[-1].volume.volume_id))
            deleted = True
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    for volume_id in ids:
        plugin.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume_id))


def test_restart_keeps_mounts_and_broken_mounts_are_repaired(plugin):
    vol = Volume(plugin, "pvc-repair", 4 * MiB)
    vol.attach()
    vol.stage()
    target = vol.publish("survivor")
    (target / "note").write_text("still here")

    plugin.stop(signal.SIGKILL)
    assert (target / "note").read_text() == "still here", "mounts outlive the plugin"
    plugin.start()
    assert (target / "note").read_text() == "still here"
    assert not vol.stats(target).volume_condition.abnormal

    def break_mount():
        for pid in processes_mentioning(str(vol.staging)):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _enotconn(target), 10, "the mount to break")

    # Repaired when the plugin starts again.
    break_mount()
    stats = vol.stats(target)
    assert stats.volume_condition.abnormal
    assert "not connected" in stats.volume_condition.message
    plugin.stop()
    plugin.start()
    wait_for(lambda: _holds(target / "note", "still here"), 60,
             "the plugin to repair the mount at start")

    # Repaired by NodeStageVolume.
    break_mount()
    vol.stage()
    assert (target / "note").read_text() == "still here"
    assert (vol.staging / "note").read_text() == "still here"
    assert not vol.stats(target).volume_condition.abnormal
    vol.teardown()


def read_direct(path: Path, length: int) -> bytes:
    """Read past every cache, as a database does."""
    buf = mmap.mmap(-1, length)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return bytes(buf[:os.preadv(fd, [buf], 0)])
    finally:
        os.close(fd)


def test_a_volume_moved_to_another_node_fences_out_the_node_it_left(plugin):
    """Node A drops out of Kubernetes' sight but still reaches the cluster; the
    attacher detaches the volume from it by force (no NodeUnstage there) and
    publishes it to node B. A must not overwrite a byte that B writes."""
    other = Plugin(plugin.cluster, mode="node", node_id=OTHER_NODE, folder=OTHER_NODE)
    other.start()
    try:
        vol = Volume(plugin, "pvc-moved", 8 * MiB)
        vol.attach()
        first = int(vol.publish_context["epoch"])
        assert vol.attach().publish_context["epoch"] == str(first), "a retry keeps the epoch"
        vol.stage()
        on_a = vol.publish("db-on-a")
        fd = os.open(on_a / "table", os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, b"A" * 65536, 0)
        os.fsync(fd)

        plugin.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
            volume_id=vol.id, node_id=NODE), timeout=60)
        moved = vol.attach(node=OTHER_NODE).publish_context
        assert int(moved["epoch"]) > first
        staging_b = other.dir / "staging" / vol.id
        staging_b.mkdir(parents=True)
        other.node.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id=vol.id, staging_target_path=str(staging_b), volume_capability=vol.cap,
            publish_context=moved, volume_context=vol.volume.volume_context), timeout=60)
        on_b = other.dir / "pods" / "db-on-b" / "mount"
        on_b.parent.mkdir(parents=True)
        other.node.NodePublishVolume(csi.NodePublishVolumeRequest(
            volume_id=vol.id, staging_target_path=str(staging_b), target_path=str(on_b),
            volume_capability=vol.cap, publish_context=moved,
            volume_context=vol.volume.volume_context), timeout=60)
        with open(on_b / "table", "r+b") as f:
            f.write(b"B" * 65536)
            f.flush()
            os.fsync(f.fileno())

        os.pwrite(fd, b"a" * 65536, 0)
        with pytest.raises(OSError) as info:
            os.fsync(fd)
        assert info.value.errno == errno.EROFS
        try:
            os.close(fd)
        except OSError as exc:
            assert exc.errno == errno.EROFS, "the failed write may be told again at close"
        with pytest.raises(OSError) as info:
            (on_a / "ib_logfile0").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
        assert read_direct(on_b / "table", 65536) == b"B" * 65536
        assert read_direct(on_a / "table", 65536) == b"B" * 65536
        (on_b / "ib_logfile0").write_bytes(b"B's log")

        # Kubelet on A, back in touch, cleans up; B hands the volume back.
        plugin.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(
            volume_id=vol.id, target_path=str(on_a)), timeout=60)
        plugin.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
            volume_id=vol.id, staging_target_path=str(vol.staging)), timeout=60)
        other.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(
            volume_id=vol.id, target_path=str(on_b)), timeout=60)
        other.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
            volume_id=vol.id, staging_target_path=str(staging_b)), timeout=60)
        plugin.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
            volume_id=vol.id, node_id=OTHER_NODE), timeout=60)
        plugin.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.id), timeout=60)
    finally:
        other.stop()


def test_published_again_to_the_same_node_the_stale_mount_is_replaced(plugin):
    vol = Volume(plugin, "pvc-back-again", 4 * MiB)
    vol.attach()
    vol.stage()
    target = vol.publish("db")
    (target / "before").write_text("kept")
    plugin.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
        volume_id=vol.id, node_id=NODE), timeout=60)
    with pytest.raises(OSError) as info:
        (target / "fenced").write_text("x")
    assert info.value.errno == errno.EROFS

    vol.attach()
    vol.stage()
    (target / "after").write_text("written")
    assert sorted(os.listdir(vol.staging)) == ["after", "before"]
    vol.teardown()


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except OSError:
        return False


def _enotconn(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


# --- error answers, RPC by RPC ------------------------------------------------

@pytest.fixture(scope="module")
def existing(plugin):
    """A volume published to NODE single-node, and a second registered node."""
    (plugin.cluster.mount / ".dfs-csi" / "nodes" / OTHER_NODE).mkdir(parents=True,
                                                                       exist_ok=True)
    vol = Volume(plugin, "pvc-errors", 4 * MiB)
    vol.attach()
    yield vol
    plugin.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
        volume_id=vol.id))
    plugin.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.id))


BAD_IDS = ["../../etc", "a/b", "..", "x\x00y", "v" * 129]
BLOCK = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(),
                             access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
GOOD = cap()


def controller_cases(vol):
    rng = csi.CapacityRange
    return [
        ("CreateVolume", csi.CreateVolumeRequest(volume_capabilities=[GOOD]),
         Code.INVALID_ARGUMENT),
        ("CreateVolume", csi.CreateVolumeRequest(name="pvc-nocaps"), Code.INVALID_ARGUMENT),
        ("CreateVolume", csi.CreateVolumeRequest(name="pvc-block", volume_capabilities=[BLOCK]),
         Code.INVALID_ARGUMENT),
        ("CreateVolume", csi.CreateVolumeRequest(name="x" * 129, volume_capabilities=[GOOD]),
         Code.INVALID_ARGUMENT),
        ("CreateVolume", csi.CreateVolumeRequest(name="pvc-range", volume_capabilities=[GOOD],
                                               capacity_range=rng(required_bytes=2 * MiB,
                                                                  limit_bytes=MiB)),
         Code.INVALID_ARGUMENT),
        ("CreateVolume", csi.CreateVolumeRequest(name="pvc-param", volume_capabilities=[GOOD],
                                               parameters={"replicas": "zero"}),
         Code.INVALID_ARGUMENT),
        ("CreateVolume", csi.CreateVolumeRequest(name="pvc-param", volume_capabilities=[GOOD],
                                               parameters={"readCacheMiB": "8"}),
         Code.INVALID_ARGUMENT),
        ("CreateVolume", csi.CreateVolumeRequest(
            name="pvc-errors", volume_capabilities=[GOOD],
            capacity_range=rng(required_bytes=8 * MiB, limit_bytes=8 * MiB)),
         Code.ALREADY_EXISTS),
        ("CreateVolume", csi.CreateVolumeRequest(name="pvc-errors", volume_capabilities=[GOOD],
                                               parameters={"replicas": "3"}),
         Code.ALREADY_EXISTS),
        ("DeleteVolume", csi.DeleteVolumeRequest(), Code.INVALID_ARGUMENT),
        ("DeleteVolume", csi.DeleteVolumeRequest(volume_id=vol.id), Code.FAILED_PRECONDITION),
        ("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            node_id=NODE, volume_capability=GOOD), Code.INVALID_ARGUMENT),
        ("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id=vol.id, volume_capability=GOOD), Code.INVALID_ARGUMENT),
        ("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id=vol.id, node_id=NODE), Code.INVALID_ARGUMENT),
        ("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id="pvc-missing", node_id=NODE, volume_capability=GOOD), Code.NOT_FOUND),
        ("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id=vol.id, node_id="node-unknown", volume_capability=GOOD), Code.NOT_FOUND),
        ("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id=vol.id, node_id=NODE, volume_capability=GOOD, readonly=True),
         Code.ALREADY_EXISTS),
        ("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id=vol.id, node_id=OTHER_NODE, volume_capability=GOOD),
         Code.FAILED_PRECONDITION),
        ("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id=vol.id, node_id=OTHER_NODE,
            volume_capability=cap(Mode.MULTI_NODE_MULTI_WRITER)), Code.FAILED_PRECONDITION),
        ("ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest(),
         Code.INVALID_ARGUMENT),
        ("ValidateVolumeCapabilities", csi.ValidateVolumeCapabilitiesRequest(
            volume_capabilities=[GOOD]), Code.INVALID_ARGUMENT),
        ("ValidateVolumeCapabilities", csi.ValidateVolumeCapabilitiesRequest(volume_id=vol.id),
         Code.INVALID_ARGUMENT),
        ("ValidateVolumeCapabilities", csi.ValidateVolumeCapabilitiesRequest(
            volume_id="pvc-missing", volume_capabilities=[GOOD]), Code.NOT_FOUND),
        ("ListVolumes", csi.ListVolumesRequest(starting_token="invalid-token"), Code.ABORTED),
        ("ListVolumes", csi.ListVolumesRequest(max_entries=-1), Code.INVALID_ARGUMENT),
        ("ControllerGetVolume", csi.ControllerGetVolumeRequest(), Code.INVALID_ARGUMENT),
        ("ControllerGetVolume", csi.ControllerGetVolumeRequest(volume_id="pvc-missing"),
         Code.NOT_FOUND),
        ("ControllerExpandVolume", csi.ControllerExpandVolumeRequest(
            capacity_range=rng(required_bytes=MiB)), Code.INVALID_ARGUMENT),
        ("ControllerExpandVolume", csi.ControllerExpandVolumeRequest(volume_id=vol.id),
         Code.INVALID_ARGUMENT),
        ("ControllerExpandVolume", csi.ControllerExpandVolumeRequest(
            volume_id="pvc-missing", capacity_range=rng(required_bytes=MiB)), Code.NOT_FOUND),
        ("ControllerExpandVolume", csi.ControllerExpandVolumeRequest(
            volume_id=vol.id, capacity_range=rng(limit_bytes=MiB)), Code.OUT_OF_RANGE),
    ]


def test_controller_errors(plugin, existing):
    failures = []
    for rpc, request, expected in controller_cases(existing):
        got = code(getattr(plugin.controller, rpc), request)
        if got != expected:
            failures.append(f"{rpc}({request}) gave {got.name}, want {expected.name}")
    assert not failures, "\n".join(failures)
    # Nothing was lost or changed by the refused calls.
    got = plugin.controller.ControllerGetVolume(csi.ControllerGetVolumeRequest(
        volume_id=existing.id))
    assert got.volume.capacity_bytes == 4 * MiB
    assert list(got.status.published_node_ids) == [NODE]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_ids_cannot_reach_outside_volumes(plugin, bad_id):
    for rpc, request in [
        (plugin.controller.DeleteVolume, csi.DeleteVolumeRequest(volume_id=bad_id)),
        (plugin.controller.ControllerPublishVolume, csi.ControllerPublishVolumeRequest(
            volume_id=bad_id, node_id=NODE, volume_capability=GOOD)),
        (plugin.controller.ControllerExpandVolume, csi.ControllerExpandVolumeRequest(
            volume_id=bad_id, capacity_range=csi.CapacityRange(required_bytes=MiB))),
        (plugin.controller.ControllerGetVolume, csi.ControllerGetVolumeRequest(volume_id=bad_id)),
        (plugin.node.NodeStageVolume, csi.NodeStageVolumeRequest(
            volume_id=bad_id, staging_target_path=str(plugin.dir), volume_capability=GOOD)),
        (plugin.node.NodeGetVolumeStats, csi.NodeGetVolumeStatsRequest(
            volume_id=bad_id, volume_path=str(plugin.dir))),
    ]:
        assert code(rpc, request) == Code.INVALID_ARGUMENT
    assert code(plugin.controller.ControllerPublishVolume, csi.ControllerPublishVolumeRequest(
        volume_id="pvc-errors", node_id="../" + NODE, volume_capability=GOOD)) == \
        Code.INVALID_ARGUMENT


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", "ünï code"])
def test_unsafe_names_get_hashed_ids_under_volumes(plugin, name):
    before = sorted(os.listdir(plugin.cluster.mount))
    made = plugin.controller.CreateVolume(csi.CreateVolumeRequest(
        name=name, volume_capabilities=[GOOD],
        capacity_range=csi.CapacityRange(required_bytes=MiB))).volume
    assert made.volume_id.startswith("_") and "/" not in made.volume_id
    assert (plugin.cluster.mount / "volumes" / made.volume_id).is_dir()
    assert sorted(os.listdir(plugin.cluster.mount)) == before
    plugin.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=made.volume_id))
    # The cluster mount may hold the entry in its dentry cache for a moment.
    wait_for(lambda: not (plugin.cluster.mount / "volumes" / made.volume_id).exists(), 10,
             "the deleted volume to vanish")


def test_node_errors(plugin, existing):
    staging = plugin.dir / "staging" / "errors"
    staging.mkdir(parents=True, exist_ok=True)
    target = plugin.dir / "pods" / "errors" / "mount"
    target.parent.mkdir(parents=True, exist_ok=True)
    cases = [
        ("NodeStageVolume", csi.NodeStageVolumeRequest(
            staging_target_path=str(staging), volume_capability=GOOD), Code.INVALID_ARGUMENT),
        ("NodeStageVolume", csi.NodeStageVolumeRequest(
            volume_id=existing.id, volume_capability=GOOD), Code.INVALID_ARGUMENT),
        ("NodeStageVolume", csi.NodeStageVolumeRequest(
            volume_id=existing.id, staging_target_path=str(staging)), Code.INVALID_ARGUMENT),
        ("NodeStageVolume", csi.NodeStageVolumeRequest(
            volume_id=existing.id, staging_target_path=str(staging), volume_capability=BLOCK),
         Code.INVALID_ARGUMENT),
        ("NodeStageVolume", csi.NodeStageVolumeRequest(
            volume_id="pvc-missing", staging_target_path=str(staging), volume_capability=GOOD),
         Code.NOT_FOUND),
        ("NodeUnstageVolume", csi.NodeUnstageVolumeRequest(staging_target_path=str(staging)),
         Code.INVALID_ARGUMENT),
        ("NodeUnstageVolume", csi.NodeUnstageVolumeRequest(volume_id=existing.id),
         Code.INVALID_ARGUMENT),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(
            target_path=str(target), staging_target_path=str(staging), volume_capability=GOOD),
         Code.INVALID_ARGUMENT),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(
            volume_id=existing.id, staging_target_path=str(staging), volume_capability=GOOD),
         Code.INVALID_ARGUMENT),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(
            volume_id=existing.id, target_path=str(target), staging_target_path=str(staging)),
         Code.INVALID_ARGUMENT),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(
            volume_id=existing.id, target_path=str(target), volume_capability=GOOD),
         Code.FAILED_PRECONDITION),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(
            volume_id=existing.id, target_path=str(target), staging_target_path=str(staging),
            volume_capability=GOOD), Code.FAILED_PRECONDITION),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(
            volume_id="pvc-missing", target_path=str(target),
            staging_target_path=str(staging), volume_capability=GOOD), Code.NOT_FOUND),
        ("NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(target_path=str(target)),
         Code.INVALID_ARGUMENT),
        ("NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(volume_id=existing.id),
         Code.INVALID_ARGUMENT),
        ("NodeGetVolumeStats", csi.NodeGetVolumeStatsRequest(volume_path="some/path"),
         Code.INVALID_ARGUMENT),
        ("NodeGetVolumeStats", csi.NodeGetVolumeStatsRequest(volume_id=existing.id),
         Code.INVALID_ARGUMENT),
        ("NodeGetVolumeStats", csi.NodeGetVolumeStatsRequest(
            volume_id="pvc-missing", volume_path=str(target)), Code.NOT_FOUND),
        ("NodeGetVolumeStats", csi.NodeGetVolumeStatsRequest(
            volume_id=existing.id, volume_path=str(target)), Code.NOT_FOUND),
        ("NodeExpandVolume", csi.NodeExpandVolumeRequest(volume_path=str(target)),
         Code.INVALID_ARGUMENT),
        ("NodeExpandVolume", csi.NodeExpandVolumeRequest(volume_id=existing.id),
         Code.INVALID_ARGUMENT),
        ("NodeExpandVolume", csi.NodeExpandVolumeRequest(
            volume_id="pvc-missing", volume_path="some/path"), Code.NOT_FOUND),
    ]
    failures = []
    for rpc, request, expected in cases:
        got = code(getattr(plugin.node, rpc), request)
        if got != expected:
            failures.append(f"{rpc}({request}) gave {got.name}, want {expected.name}")
    assert not failures, "\n".join(failures)
    assert not target.exists() and staging.is_dir()
    info = plugin.node.NodeGetInfo(csi.NodeGetInfoRequest())
    assert info.node_id == NODE and info.max_volumes_per_node == 0


def test_node_publish_table(plugin, existing):
    """A second target path: refused for single-writer modes, fine for multi ones;
    the same target with other options is ALREADY_EXISTS."""
    single = Volume(plugin, "pvc-rwop", 4 * MiB, mode=Mode.SINGLE_NODE_SINGLE_WRITER)
    single.attach()
    single.stage()
    single.publish("first")
    request = csi.NodePublishVolumeRequest(
        volume_id=single.id, staging_target_path=str(single.staging),
        target_path=str(plugin.dir / "pods" / "second" / "mount"), volume_capability=single.cap)
    (plugin.dir / "pods" / "second").mkdir(parents=True, exist_ok=True)
    assert code(plugin.node.NodePublishVolume, request) == Code.FAILED_PRECONDITION
    same_target_readonly = csi.NodePublishVolumeRequest(
        volume_id=single.id, staging_target_path=str(single.staging),
        target_path=str(single.targets[0]), volume_capability=single.cap, readonly=True)
    assert code(plugin.node.NodePublishVolume, same_target_readonly) == Code.ALREADY_EXISTS
    single.teardown()

    shared = Volume(plugin, "pvc-rwx", 4 * MiB, mode=Mode.MULTI_NODE_MULTI_WRITER)
    shared.attach()
    shared.attach(node=OTHER_NODE)
    shared.stage()
    one, two = shared.publish("rwx-1"), shared.publish("rwx-2")
    (one / "from-one").write_text("1")
    assert (two / "from-one").read_text() == "1"
    plugin.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
        volume_id=shared.id))
    shared.teardown()


def test_conformance_details(plugin):
    """Answers the csi-sanity suite checks beyond the ones above."""
    longest = "n" * 128
    made = Volume(plugin, longest, 10 << 30)
    assert made.id == longest and made.volume.capacity_bytes == 10 << 30
    grown = made.expand(11 << 30)
    assert grown.capacity_bytes == 11 << 30
    assert made.expand(5 << 30).capacity_bytes == 11 << 30, "a smaller request is a no-op"
    before = len(plugin.controller.ListVolumes(csi.ListVolumesRequest()).entries)
    plugin.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=made.id))
    after = plugin.controller.ListVolumes(csi.ListVolumesRequest()).entries
    assert len(after) == before - 1
    plugin.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id="fake-vol-id"))
    assert plugin.controller.GetCapacity(csi.GetCapacityRequest()).available_capacity > 0
    valid = plugin.controller.ValidateVolumeCapabilities  # on a fresh volume below
    fresh = Volume(plugin, "pvc-validate", MiB)
    answer = valid(csi.ValidateVolumeCapabilitiesRequest(
        volume_id=fresh.id, volume_capabilities=[GOOD],
        volume_context=fresh.volume.volume_context))
    assert list(answer.confirmed.volume_capabilities) == [GOOD]
    refused = valid(csi.ValidateVolumeCapabilitiesRequest(volume_id=fresh.id,
                                                          volume_capabilities=[BLOCK]))
    assert not refused.HasField("confirmed") and "block" in refused.message
    plugin.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=fresh.id))
    node_caps = plugin.node.NodeGetCapabilities(csi.NodeGetCapabilitiesRequest())
    assert csi.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME in \
        [c.rpc.type for c in node_caps.capabilities]
    ctl_caps = plugin.controller.ControllerGetCapabilities(
        csi.ControllerGetCapabilitiesRequest())
    assert csi.ControllerServiceCapability.RPC.EXPAND_VOLUME in \
        [c.rpc.type for c in ctl_caps.capabilities]
