"""Volumes through dfs's CSI controller, the way Kubernetes makes and grows them:
CreateVolume with a capacity, then ControllerExpandVolume online."""

import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import procs

try:
    import grpc
    from csi_plugin import csi_pb2 as csi
    from csi_plugin import csi_pb2_grpc
except ImportError:     # the csi extra is optional: without it volumes use `dfs quota set`
    grpc = None

CSI_COMMAND = Path(sys.executable).parent / "dfs-csi"


def available() -> bool:
    return grpc is not None and CSI_COMMAND.exists()


class CsiController:
    """A dfs-csi in controller mode on a private unix socket, and a gRPC client for it."""

    def __init__(self, meta: str, secret_file: Path, folder: Path):
        self.meta, self.secret_file, self.folder = meta, secret_file, folder
        self.socket_dir = procs.socket_folder("dfsb-csi-")
        self.socket = self.socket_dir / "csi.sock"
        self.proc = None
        self.channel = None
        self.stub = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "csi.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(CSI_COMMAND), "--mode", "controller", "--endpoint", f"unix://{self.socket}",
                 "--meta", self.meta, "--secret-file", str(self.secret_file)],
                stdout=log, stderr=subprocess.STDOUT)
        procs.wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, 30,
                       f"dfs-csi on {self.socket}")
        if self.proc.poll() is not None:
            raise procs.BenchError(f"dfs-csi exited with {self.proc.returncode}; see "
                                   f"{self.folder / 'csi.log'}")
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.stub = csi_pb2_grpc.ControllerStub(self.channel)

    def stop(self) -> None:
        if self.channel:
            self.channel.close()
        if self.proc:
            procs.stop_process(self.proc)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def _call(self, method: str, request):
        try:
            return getattr(self.stub, method)(request, timeout=30)
        except grpc.RpcError as exc:
            raise procs.BenchError(f"CSI {method}: {exc.code().name}: {exc.details()}") from None

    def create_volume(self, name: str, size: int) -> str:
        capability = csi.VolumeCapability(
            mount=csi.VolumeCapability.MountVolume(),
            access_mode=csi.VolumeCapability.AccessMode(
                mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))
        reply = self._call("CreateVolume", csi.CreateVolumeRequest(
            name=name, capacity_range=csi.CapacityRange(required_bytes=size),
            volume_capabilities=[capability]))
        return reply.volume.volume_id

    def expand_volume(self, volume_id: str, size: int) -> None:
        self._call("ControllerExpandVolume", csi.ControllerExpandVolumeRequest(
            volume_id=volume_id, capacity_range=csi.CapacityRange(required_bytes=size)))

    def delete_volume(self, volume_id: str) -> None:
        self._call("DeleteVolume", csi.DeleteVolumeRequest(volume_id=volume_id))
