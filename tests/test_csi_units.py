"""csi_plugin's pure parts: ids, capabilities, capacity, parameters, content
sources, paging, locks, mountinfo."""

import subprocess
import sys

import grpc
import pytest

from csi_plugin import capabilities as caps
from csi_plugin import csi_pb2 as csi
from csi_plugin import nodemetrics, parameters, sources
from csi_plugin.errors import CsiError
from csi_plugin.ids import check_id, check_node_id, check_snapshot_id, check_volume_id, id_for
from csi_plugin.locks import SNAPSHOT_KEY, Locks
from csi_plugin.main import node_zone, socket_path
from csi_plugin.mounts import _unescape
from csi_plugin.paging import page

MiB = 1 << 20
Mode = csi.VolumeCapability.AccessMode


def code_of(fn, *args):
    with pytest.raises(CsiError) as info:
        fn(*args)
    return info.value.code


def test_safe_names_are_their_own_ids():
    assert id_for("pvc-0d5c3c2e-1f0b-4c1e-9a55-1b2c3d4e5f60") == \
        "pvc-0d5c3c2e-1f0b-4c1e-9a55-1b2c3d4e5f60"
    assert id_for("snapshot-0d5c3c2e-1f0b-4c1e-9a55-1b2c3d4e5f60") == \
        "snapshot-0d5c3c2e-1f0b-4c1e-9a55-1b2c3d4e5f60"
    assert id_for("a" * 128) == "a" * 128


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", ".", "-x", "_hidden", "ünïcode",
                                  "with space", "b" * 120 + "/"])
def test_unsafe_names_hash_to_safe_ids(name):
    volume_id = id_for(name)
    assert volume_id.startswith("_") and "/" not in volume_id and ".." not in volume_id
    assert check_volume_id(volume_id) == volume_id
    assert check_snapshot_id(volume_id) == volume_id
    assert id_for(name) == volume_id


@pytest.mark.parametrize("name", ["", "a" * 129, "bad\x00nul", "bell\x07", "c1\x85"])
def test_bad_names_are_invalid(name):
    assert code_of(id_for, name) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("volume_id", ["", "..", ".", "../x", "a/b", "/abs", "x\x00y",
                                       "a" * 129, "_short", "_" + "g" * 40, " lead"])
def test_ids_that_could_escape_are_refused(volume_id):
    assert code_of(check_volume_id, volume_id) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(check_snapshot_id, volume_id) == grpc.StatusCode.INVALID_ARGUMENT


def test_refused_ids_name_the_field():
    with pytest.raises(CsiError) as info:
        check_id("../up", "source_volume_id")
    assert info.value.message.startswith("source_volume_id ")
    with pytest.raises(CsiError) as info:
        check_snapshot_id("")
    assert info.value.message == "snapshot_id is required"


@pytest.mark.parametrize("node_id", ["", "../n", "n/1", "n" * 257, "-n"])
def test_bad_node_ids(node_id):
    assert code_of(check_node_id, node_id) == grpc.StatusCode.INVALID_ARGUMENT


def test_good_node_id():
    assert check_node_id("worker-1.example.com") == "worker-1.example.com"


def mount_cap(mode=Mode.SINGLE_NODE_WRITER, fs_type="", flags=()):
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=Mode(mode=mode))


@pytest.mark.parametrize("mode", [Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_SINGLE_WRITER,
                                  Mode.SINGLE_NODE_MULTI_WRITER, Mode.SINGLE_NODE_READER_ONLY,
                                  Mode.MULTI_NODE_READER_ONLY, Mode.MULTI_NODE_SINGLE_WRITER,
                                  Mode.MULTI_NODE_MULTI_WRITER])
def test_every_access_mode_is_served(mode):
    caps.check_capability(mount_cap(mode))


def test_block_access_is_refused_with_a_reason():
    cap = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(),
                               access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
    with pytest.raises(CsiError) as info:
        caps.check_capability(cap)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "block" in info.value.message


@pytest.mark.parametrize("cap", [
    mount_cap(Mode.UNKNOWN), mount_cap(fs_type="ext4"), mount_cap(flags=["bind"]),
    csi.VolumeCapability(access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER)),
    csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume()),
])
def test_unservable_capabilities(cap):
    assert code_of(caps.check_capability, cap) == grpc.StatusCode.INVALID_ARGUMENT


def test_read_only_follows_mode_and_flags():
    assert caps.read_only(mount_cap(Mode.MULTI_NODE_READER_ONLY))
    assert caps.read_only(mount_cap(flags=["ro"]))
    assert not caps.read_only(mount_cap(Mode.MULTI_NODE_MULTI_WRITER))


def rng(required=0, limit=0):
    return csi.CapacityRange(required_bytes=required, limit_bytes=limit)


@pytest.mark.parametrize("wanted, size", [
    (None, caps.GiB),
    (rng(), caps.GiB),
    (rng(required=1), MiB),
    (rng(required=10 * MiB + 1), 11 * MiB),
    (rng(required=10 << 30), 10 << 30),
    (rng(required=1000, limit=3000), 3000),
    (rng(limit=5 * MiB), 5 * MiB),
    (rng(required=MiB, limit=MiB), MiB),
])
def test_size_for_create(wanted, size):
    got = caps.size_for_create(wanted)
    assert got == size
    assert caps.size_fits(got, wanted)


@pytest.mark.parametrize("wanted, code", [
    (rng(required=-1), grpc.StatusCode.INVALID_ARGUMENT),
    (rng(required=2 * MiB, limit=MiB), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_bad_ranges(wanted, code):
    assert code_of(caps.size_for_create, wanted) == code


@pytest.mark.parametrize("wanted, content, size", [
    (None, 5 * MiB, caps.GiB),
    (None, 3 * caps.GiB + 1, 3 * caps.GiB + MiB),
    (rng(), 2 * caps.GiB, 2 * caps.GiB),
    (rng(required=5 * MiB), 5 * MiB, 5 * MiB),
    (rng(required=5 * MiB), 4 * MiB + 1, 5 * MiB),
    (rng(limit=8 * MiB), 6 * MiB, 8 * MiB),
])
def test_a_copy_gets_room_for_its_content(wanted, content, size):
    assert caps.size_for_create(wanted, content) == size


@pytest.mark.parametrize("wanted, content", [
    (rng(required=4 * MiB), 5 * MiB),
    (rng(required=MiB, limit=4 * MiB), 5 * MiB),
    (rng(limit=4 * MiB), 5 * MiB),
])
def test_a_copy_smaller_than_its_content_is_out_of_range(wanted, content):
    assert code_of(caps.size_for_create, wanted, content) == grpc.StatusCode.OUT_OF_RANGE


def test_size_for_expand_is_exact_and_never_shrinks():
    assert caps.size_for_expand(10 * MiB, rng(required=(10 << 30) + (1 << 30))) == 11 << 30
    assert caps.size_for_expand(10 * MiB, rng(required=MiB)) == 10 * MiB
    assert caps.size_for_expand(10 * MiB, rng(limit=20 * MiB)) == 20 * MiB
    assert code_of(caps.size_for_expand, 10 * MiB, rng(limit=MiB)) == grpc.StatusCode.OUT_OF_RANGE
    assert code_of(caps.size_for_expand, 10 * MiB, rng()) == grpc.StatusCode.INVALID_ARGUMENT


def test_parameters():
    assert parameters.parse({"replicas": "3", "inodeLimit": "1000", "readCacheMiB": "512",
                             "xattrs": "False", "csi.storage.k8s.io/pvc/name": "data"}) == \
        {"replicas": 3, "inodeLimit": 1000, "readCacheMiB": 512, "xattrs": "false"}
    for bad in ({"replicas": "0"}, {"replicas": "x"}, {"replicas": "17"}, {"colour": "red"},
                {"readCacheMiB": "15"}, {"readCacheMiB": "-1"}, {"readCacheMiB": "2097152"},
                {"xattrs": "no"}, {"xattrs": ""}):
        assert code_of(parameters.parse, bad) == grpc.StatusCode.INVALID_ARGUMENT


def test_snapshot_parameters_are_only_the_sidecars():
    parameters.check_snapshot_parameters({"csi.storage.k8s.io/volumesnapshot/name": "s"})
    assert code_of(parameters.check_snapshot_parameters, {"replicas": "2"}) == \
        grpc.StatusCode.INVALID_ARGUMENT


def create_request(**source):
    return csi.CreateVolumeRequest(name="v", volume_content_source=csi.VolumeContentSource(
        **source))


def test_content_sources_are_read_checked_and_recorded():
    Content = csi.VolumeContentSource
    assert sources.requested(csi.CreateVolumeRequest(name="v")) is None
    snap = sources.requested(create_request(snapshot=Content.SnapshotSource(snapshot_id="s-1")))
    vol = sources.requested(create_request(volume=Content.VolumeSource(volume_id="pvc-1")))
    assert (snap.kind, snap.id, vol.kind, vol.id) == ("snapshot", "s-1", "volume", "pvc-1")
    for source in (snap, vol):
        assert sources.Source.from_wire(source.to_wire()) == source
        assert source.message().WhichOneof("type") == source.kind
    assert sources.Source.from_wire(None) is None
    # Where the source was found is no part of its identity.
    assert sources.Source("volume", "pvc-1", ino=9, size=MiB) == vol
    for bad in (create_request(),
                create_request(snapshot=Content.SnapshotSource(snapshot_id="../x")),
                create_request(volume=Content.VolumeSource())):
        assert code_of(sources.requested, bad) == grpc.StatusCode.INVALID_ARGUMENT


def test_pages_follow_tokens_and_skip_what_is_gone():
    ids = ["a", "b", "c", "d", "e"]
    gone = {"b"}

    def load(item_id):
        return None if item_id in gone else item_id.upper()

    first, token = page(csi.ListSnapshotsRequest(max_entries=2), ids, load)
    assert first == ["A", "C"] and token == "after:c"
    rest, token = page(csi.ListSnapshotsRequest(max_entries=2, starting_token=token), ids, load)
    assert rest == ["D", "E"] and token == ""
    assert page(csi.ListVolumesRequest(), ids, load) == (["A", "C", "D", "E"], "")
    assert code_of(page, csi.ListVolumesRequest(starting_token="x"), ids, load) == \
        grpc.StatusCode.ABORTED
    assert code_of(page, csi.ListVolumesRequest(max_entries=-1), ids, load) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_locks_are_per_key_and_taken_in_one_order():
    locks = Locks()
    assert locks("pvc-1") is locks("pvc-1") and locks("pvc-1") is not locks(SNAPSHOT_KEY + "pvc-1")
    with locks.holding(SNAPSHOT_KEY + "s", "pvc-1", "pvc-1"):
        assert locks("pvc-1").locked() and locks(SNAPSHOT_KEY + "s").locked()
    assert not locks("pvc-1").locked()


def test_mountinfo_unescape():
    assert _unescape(r"/var/lib/with\040space\011tab\134") == "/var/lib/with space\ttab\\"


def test_endpoint_parsing():
    assert socket_path("unix:///run/csi/csi.sock") == "/run/csi/csi.sock"
    assert socket_path("unix:/run/csi.sock") == "/run/csi.sock"
    for bad in ("tcp://1.2.3.4:5", "unix://relative.sock", "/no/scheme"):
        with pytest.raises(ValueError):
            socket_path(bad)


@pytest.mark.timeout(30)
def test_command_line_errors_are_clear(tmp_path):
    help_run = subprocess.run([sys.executable, "-m", "csi_plugin.main", "--help"],
                              capture_output=True, text=True)
    assert help_run.returncode == 0 and "--endpoint" in help_run.stdout
    bad = subprocess.run([sys.executable, "-m", "csi_plugin.main", "--meta", "127.0.0.1:1",
                          "--endpoint", "tcp://x", "--secret-file", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "endpoint" in bad.stderr


def test_mount_metrics_are_labelled_with_their_volume(tmp_path):
    assert nodemetrics._labelled('dfs_fuse_requests_total{op="read",result="ok"} 3',
                                 'volume_id="v"') \
        == 'dfs_fuse_requests_total{volume_id="v",op="read",result="ok"} 3'
    assert nodemetrics._labelled("process_cpu_seconds_total 1.5", 'volume_id="v"') \
        == 'process_cpu_seconds_total{volume_id="v"} 1.5'
    # A volume whose mount does not answer is reported down, and nothing else of it.
    page = nodemetrics.gather(str(tmp_path), ["pvc-gone"])
    assert 'dfs_csi_mount_up{volume_id="pvc-gone"} 0' in page.splitlines()
    assert len(nodemetrics.socket_path("/var/lib/dfs-csi/metrics", "x" * 300)) < 108


def test_the_node_zone_is_the_node_id_unless_given():
    assert node_zone(None, "node-a") == "node-a"
    assert node_zone("rack-2", "node-a") == "rack-2"
    # Given empty: no zone, reads take turns over the replicas.
    assert node_zone("", "node-a") == ""
    # A node id too long for a zone name (64 characters) gives none.
    assert node_zone(None, "n" * 100) == ""
