"""Replication factor per directory and file: placement, inheritance,
re-replication to a raised factor, status, fsck, the dfs command and the CSI
`replicas` parameter, on one real cluster of three chunk servers (R=2)."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from conftest import TEST_CHUNK_SIZE, start_cluster
from csi_plugin import csi_pb2 as csi
from csi_plugin import csi_pb2_grpc
from dfs.errors import DfsError
from faults import chunks_of, meta_call, replica_version, status, stop_process, wait_for

MiB = 1024 * 1024
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def rf(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("replication-factor"))
    yield cluster
    cluster.teardown()


def factor(rf, path: str) -> dict:
    reply = rf.dfs("replicas", "get", *rf.cli_args, path, "--json")
    return json.loads(reply.stdout)


def copies(rf, path: str) -> list[int]:
    """Live replicas of each chunk of a file, as the metaserver hands them out."""
    return [len(c["servers"]) for c in chunks_of(rf.ref, path, TEST_CHUNK_SIZE)]


def copies_on_disk(rf, path: str) -> list[int]:
    counts = []
    for c in chunks_of(rf.ref, path, TEST_CHUNK_SIZE):
        counts.append(sum(replica_version(rf.local.dir / f"cs{n}" / "data", c["chunk"])
                          is not None for n in (1, 2, 3)))
    return counts


def settled(rf) -> bool:
    st = status(rf.ref)
    return st["under_replicated"] == 0 and st["replicating"] == 0


@pytest.mark.timeout(60)
def test_directory_factor_places_chunks_and_is_inherited(rf):
    (rf.mnt / "three" / "sub").mkdir(parents=True)
    (rf.mnt / "one").mkdir()
    # The subdirectory existed before: it keeps the default.
    rf.dfs("replicas", "set", *rf.cli_args, "/three", "3")
    rf.dfs("replicas", "set", *rf.cli_args, "/one", "1")
    (rf.mnt / "three" / "later").mkdir()
    data = os.urandom(2 * MiB + 9)
    for path in ("three/f", "three/later/f", "three/sub/f", "one/f", "plain"):
        (rf.mnt / path).write_bytes(data)

    assert copies(rf, "/three/f") == [3, 3, 3]
    assert copies_on_disk(rf, "/three/f") == [3, 3, 3]
    assert copies(rf, "/three/later/f") == [3, 3, 3], "new subdirectories inherit"
    assert copies(rf, "/three/sub/f") == [2, 2, 2]
    assert copies(rf, "/one/f") == [1, 1, 1]
    assert copies_on_disk(rf, "/one/f") == [1, 1, 1]
    assert copies(rf, "/plain") == [2, 2, 2]
    assert factor(rf, "/three/later") == {"replicas": 3, "effective": 3}
    assert factor(rf, "/three/f") == {"replicas": 3, "effective": 3}
    assert factor(rf, "/plain") == {"replicas": 0, "effective": 2}
    assert "2 replicas (the cluster default)" in rf.dfs(
        "replicas", "get", *rf.cli_args, "/three/sub").stdout
    assert (rf.mnt / "one" / "f").read_bytes() == data

    time.sleep(1.5)   # a re-replication round must not top the 1-copy file up
    assert settled(rf)
    assert copies(rf, "/one/f") == [1, 1, 1]
    checked = rf.dfs("fsck", *rf.cli_args, "--json")
    assert not json.loads(checked.stdout)["problems"]


@pytest.mark.timeout(60)
def test_raising_a_files_factor_adds_copies_lowering_deletes_them(rf):
    data = os.urandom(MiB + 3)
    (rf.mnt / "grow").write_bytes(data)
    assert copies(rf, "/grow") == [2, 2]
    reply = rf.dfs("replicas", "set", *rf.cli_args, "/grow", "3")
    assert "/grow: 3 replicas (its own)" in reply.stdout
    wait_for(lambda: copies(rf, "/grow") == [3, 3], 20, "the new copies of /grow")
    wait_for(lambda: settled(rf), 20, "re-replication to finish")
    assert copies_on_disk(rf, "/grow") == [3, 3]
    assert (rf.mount() / "grow").read_bytes() == data

    rf.dfs("replicas", "set", *rf.cli_args, "/grow", "1")
    assert factor(rf, "/grow") == {"replicas": 1, "effective": 1}
    wait_for(lambda: copies(rf, "/grow") == [1, 1], 20, "the extra copies to be deleted")
    wait_for(lambda: copies_on_disk(rf, "/grow") == [1, 1], 20, "the extra replicas to go")
    assert (rf.mount() / "grow").read_bytes() == data
    with open(rf.mnt / "grow", "r+b") as f:
        f.write(b"changed")
    assert (rf.mount() / "grow").read_bytes() == b"changed" + data[7:]


@pytest.mark.timeout(60)
def test_a_factor_above_the_live_servers_is_under_replicated(rf):
    (rf.mnt / "many").mkdir()
    rf.dfs("replicas", "set", *rf.cli_args, "/many", "4")
    (rf.mnt / "many" / "f").write_bytes(b"x" * 1000)
    assert copies(rf, "/many/f") == [3]
    assert status(rf.ref)["under_replicated"] == 1
    problems = json.loads(rf.dfs("fsck", *rf.cli_args, "--json", check=False).stdout)
    assert [p["kind"] for p in problems["problems"]] == ["under_replicated"]
    rf.dfs("replicas", "set", *rf.cli_args, "/many/f", "3")
    assert settled(rf)


@pytest.mark.timeout(30)
def test_bad_factors_and_targets_are_refused(rf):
    (rf.mnt / "keep").mkdir()
    os.symlink("keep", rf.mnt / "link")
    ino = meta_call(rf.ref, "resolve", path=b"/keep")["ino"]
    for bad in (0, 17, -1):
        with pytest.raises(DfsError) as caught:
            meta_call(rf.ref, "replicas_set", ino=ino, replicas=bad)
        assert caught.value.errno == errno.EINVAL
    link = meta_call(rf.ref, "resolve", path=b"/link")["ino"]
    with pytest.raises(DfsError) as caught:
        meta_call(rf.ref, "replicas_set", ino=link, replicas=2)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(DfsError) as caught:
        meta_call(rf.ref, "replicas_get", ino=999999)
    assert caught.value.errno == errno.ENOENT
    refused = rf.dfs("replicas", "set", *rf.cli_args, "/keep", "17", check=False)
    assert refused.returncode != 0 and "1..16" in refused.stderr
    missing = rf.dfs("replicas", "get", *rf.cli_args, "/nothing", check=False)
    assert missing.returncode != 0
    assert factor(rf, "/keep") == {"replicas": 0, "effective": 2}
    assert "How many chunk servers hold each chunk" in rf.dfs("replicas", "--help").stdout


@pytest.mark.timeout(60)
def test_csi_replicas_parameter_sets_the_volume_factor(rf, tmp_path):
    socket = tmp_path / "csi.sock"
    with open(tmp_path / "plugin.log", "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "dfs-csi"), "--endpoint", f"unix://{socket}", "--meta", rf.ref.meta,
             "--secret-file", str(rf.local.dir / "secret"), "--mode", "controller"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    channel = grpc.insecure_channel(f"unix://{socket}")
    try:
        controller = csi_pb2_grpc.ControllerStub(channel)
        cap = csi.VolumeCapability(
            mount=csi.VolumeCapability.MountVolume(),
            access_mode=csi.VolumeCapability.AccessMode(
                mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))
        request = csi.CreateVolumeRequest(name="pvc-three", volume_capabilities=[cap],
                                          parameters={"replicas": "3"})
        created = wait_for(lambda: _try(controller.CreateVolume, request), 30,
                           "dfs-csi to create the volume")
        again = controller.CreateVolume(request, timeout=10)
        assert again.volume.volume_id == created.volume.volume_id
        path = f"/volumes/{created.volume.volume_id}"
        assert factor(rf, path) == {"replicas": 3, "effective": 3}
        (rf.mnt / path[1:] / "f").write_bytes(b"data")
        assert copies(rf, f"{path}/f") == [3]
        with pytest.raises(grpc.RpcError) as caught:
            controller.CreateVolume(csi.CreateVolumeRequest(
                name="pvc-three", volume_capabilities=[cap], parameters={"replicas": "2"}),
                timeout=10)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=created.volume.volume_id),
                                timeout=10)
    finally:
        channel.close()
        stop_process(proc)


def _try(call, request):
    try:
        return call(request, timeout=5)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None
