"""dfs-csi with no metaserver behind it, or with another cluster's: it starts,
says it is not ready, and answers every call with a status code instead of
hanging, dying or acting on the wrong cluster."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from csi_plugin import csi_pb2 as csi
from csi_plugin import csi_pb2_grpc
from faults import status, stop_process

BIN = Path(sys.executable).parent
Mode = csi.VolumeCapability.AccessMode


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_plugin(tmp_path):
    sock = tmp_path / "csi.sock"
    secret = tmp_path / "secret"
    secret.write_text("offline-test-secret-0123456789")
    proc = subprocess.Popen(
        [str(BIN / "dfs-csi"), "--endpoint", f"unix://{sock}", "--meta",
         f"127.0.0.1:{closed_port()}", "--secret-file", str(secret), "--node-id", "lonely",
         "--state-dir", str(tmp_path / "state"), "--mode", "all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, "dfs-csi exited without a metaserver"
            assert time.monotonic() < deadline, "dfs-csi never opened its socket"
            time.sleep(0.05)
        channel = grpc.insecure_channel(f"unix://{sock}")
        yield channel
        channel.close()
    finally:
        stop_process(proc)
    assert not sock.exists(), "the socket is removed on a clean stop"


@pytest.mark.timeout(90)
def test_unreachable_metaserver_is_reported_not_hung(offline_plugin):
    identity = csi_pb2_grpc.IdentityStub(offline_plugin)
    assert identity.GetPluginInfo(csi.GetPluginInfoRequest(), timeout=10).name
    assert identity.Probe(csi.ProbeRequest(), timeout=30).ready.value is False

    controller = csi_pb2_grpc.ControllerStub(offline_plugin)
    cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(),
                               access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
    with pytest.raises(grpc.RpcError) as info:
        controller.CreateVolume(csi.CreateVolumeRequest(name="pvc-offline",
                                                        volume_capabilities=[cap]), timeout=60)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # Checks that need no metaserver still answer at once.
    with pytest.raises(grpc.RpcError) as info:
        controller.CreateVolume(csi.CreateVolumeRequest(volume_capabilities=[cap]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    node = csi_pb2_grpc.NodeStub(offline_plugin)
    assert node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=10).node_id == "lonely"


@pytest.mark.timeout(90)
def test_a_plugin_pinned_to_another_cluster_makes_no_volume(shared_cluster, tmp_path):
    ours = status(shared_cluster.ref)["cluster"]

    def plugin(cluster: int) -> tuple[subprocess.Popen, Path]:
        sock = tmp_path / f"csi-{cluster:x}.sock"
        proc = subprocess.Popen(
            [str(BIN / "dfs-csi"), "--endpoint", f"unix://{sock}", "--meta",
             shared_cluster.ref.meta, "--secret-file", shared_cluster.ref.secret_file,
             "--cluster-id", f"{cluster:x}", "--mode", "controller"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "dfs-csi did not start"
            time.sleep(0.05)
        return proc, sock

    cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(),
                               access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
    request = csi.CreateVolumeRequest(name="pvc-pinned", volume_capabilities=[cap])
    for cluster in (ours ^ 1, ours):
        proc, sock = plugin(cluster)
        try:
            with grpc.insecure_channel(f"unix://{sock}") as channel:
                controller = csi_pb2_grpc.ControllerStub(channel)
                if cluster != ours:
                    with pytest.raises(grpc.RpcError) as info:
                        controller.CreateVolume(request, timeout=60)
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert f"is cluster {ours:x}'s" in info.value.details()
                else:
                    made = controller.CreateVolume(request, timeout=60).volume
                    controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=made.volume_id),
                                            timeout=60)
        finally:
            stop_process(proc)
    assert not (shared_cluster.mnt / "volumes" / "pvc-pinned").exists()
