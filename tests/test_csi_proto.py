"""The committed gRPC modules of csi_plugin match csi_plugin/csi.proto."""

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from csi_plugin import csi_pb2, csi_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_generated_descriptor_matches_proto(tmp_path):
    out = tmp_path / "csi.desc"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT),
                    f"--descriptor_set_out={out}", "csi_plugin/csi.proto"],
                   check=True, cwd=ROOT)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    # The generated module leaves out derived JSON names; so does the comparison.
    _drop_json_names(fresh.message_type)
    for extension in fresh.extension:
        extension.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(csi_pb2.DESCRIPTOR.serialized_pb)
    assert fresh == committed, ("csi_plugin/csi_pb2.py is stale: regenerate it as the "
                                "header of csi_plugin/csi.proto says")


def test_every_rpc_has_a_stub():
    source = Path(csi_pb2_grpc.__file__).read_text()
    for service in csi_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert f"/csi.v1.{service.name}/{method.name}" in source


def _drop_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)


# Field numbers are the wire contract with Kubernetes: spot-check the ones a
# typo would most likely break.
@pytest.mark.parametrize("message, field, number", [
    ("CreateVolumeRequest", "volume_capabilities", 3),
    ("CreateVolumeRequest", "parameters", 4),
    ("Volume", "volume_id", 2),
    ("ControllerPublishVolumeRequest", "readonly", 4),
    ("ListVolumesResponse", "next_token", 2),
    ("NodePublishVolumeRequest", "target_path", 4),
    ("NodePublishVolumeRequest", "readonly", 6),
    ("NodeGetVolumeStatsResponse", "volume_condition", 2),
    ("ControllerExpandVolumeResponse", "node_expansion_required", 2),
    ("NodeExpandVolumeRequest", "staging_target_path", 4),
    ("CreateSnapshotRequest", "source_volume_id", 1),
    ("CreateSnapshotRequest", "parameters", 4),
    ("Snapshot", "size_bytes", 1),
    ("Snapshot", "creation_time", 4),
    ("Snapshot", "ready_to_use", 5),
    ("ListSnapshotsRequest", "source_volume_id", 3),
    ("ListSnapshotsRequest", "snapshot_id", 4),
    ("ListSnapshotsRequest", "secrets", 5),
    ("VolumeContentSource", "volume", 2),
])
def test_field_numbers(message, field, number):
    assert csi_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[field].number == number


def test_package_and_enum_values():
    assert csi_pb2.DESCRIPTOR.package == "csi.v1"
    mode = csi_pb2.VolumeCapability.AccessMode
    assert mode.SINGLE_NODE_SINGLE_WRITER == 6 and mode.MULTI_NODE_MULTI_WRITER == 5
    assert csi_pb2.ControllerServiceCapability.RPC.GET_VOLUME == 12
    assert csi_pb2.ControllerServiceCapability.RPC.CLONE_VOLUME == 7
    creation_time = csi_pb2.Snapshot.DESCRIPTOR.fields_by_name["creation_time"]
    assert creation_time.message_type.full_name == "google.protobuf.Timestamp"
    assert csi_pb2.NodeServiceCapability.RPC.VOLUME_CONDITION == 4
