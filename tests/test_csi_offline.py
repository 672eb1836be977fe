"""dfs-csi with no metaserver behind it: it starts, says it is not ready, and
answers every call with a status code instead of hanging or dying."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from csi_plugin import csi_pb2 as csi
from csi_plugin import csi_pb2_grpc
from faults import stop_process

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
