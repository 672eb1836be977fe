"""CSI snapshots and clones, driven over the plugin's socket as the
external-snapshotter and external-provisioner drive them.

A snapshot is a copy-on-write copy of a volume's tree: the tests write files
of several chunks into a volume through a pod's bind mount, take a snapshot,
change the volume in every way a program can, then restore the snapshot and
clone the volume into new volumes and read them through fresh mounts, byte for
byte. Fixtures and the `Volume` helper come from test_csi_e2e.
"""

import hashlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from csi_plugin import csi_pb2 as csi
from test_csi_e2e import (BAD_IDS, WRITER, Code, MiB, Volume, cap, cluster, code, plugin,
                          usage, wait_for)

pytestmark = pytest.mark.timeout(240)
# The fixtures this module's tests run on.
__all__ = ["cluster", "plugin"]

Content = csi.VolumeContentSource
RPC = csi.ControllerServiceCapability.RPC
GOOD = cap()


def from_snapshot(snapshot_id: str) -> csi.VolumeContentSource:
    return Content(snapshot=Content.SnapshotSource(snapshot_id=snapshot_id))


def from_volume(volume_id: str) -> csi.VolumeContentSource:
    return Content(volume=Content.VolumeSource(volume_id=volume_id))


class Made:
    """The volumes and snapshots one test makes, all removed after it."""

    def __init__(self, plugin):
        self.plugin = plugin
        self.volumes: list[Volume] = []
        self.snapshot_ids: list[str] = []

    def volume(self, name: str, size: int, **options) -> Volume:
        vol = Volume(self.plugin, name, size, **options)
        self.volumes.append(vol)
        return vol

    def mounted(self, name: str, size: int, **options) -> tuple[Volume, Path]:
        """A new volume attached, staged and published to a pod named after it."""
        vol = self.volume(name, size, **options)
        vol.attach()
        vol.stage()
        return vol, vol.publish(name)

    def snapshot(self, name: str, volume_id: str) -> csi.Snapshot:
        taken = self.plugin.controller.CreateSnapshot(csi.CreateSnapshotRequest(
            name=name, source_volume_id=volume_id), timeout=60).snapshot
        self.snapshot_ids.append(taken.snapshot_id)
        return taken

    def remove(self) -> None:
        for vol in reversed(self.volumes):
            vol.teardown()
        for snapshot_id in self.snapshot_ids:
            self.plugin.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(
                snapshot_id=snapshot_id), timeout=60)


@pytest.fixture
def made(plugin):
    made = Made(plugin)
    try:
        yield made
    finally:
        made.remove()


def write(path: Path, data: bytes, mode="wb", offset: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        if offset is not None:
            f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def digest(root: Path) -> dict[str, str]:
    """Every entry under `root`: a file's mode and SHA-256, a link's target."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = "-> " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = f"dir {st.st_mode & 0o7777:o}"
            else:
                found[rel] = f"{st.st_mode & 0o7777:o} " + \
                    hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def fill(target: Path) -> None:
    """Files of one and of several 1 MiB chunks, a folder, a symlink, a hard link."""
    write(target / "notes.txt", b"first words\n")
    write(target / "table.ibd", os.urandom(3 * MiB + 123_456))
    write(target / "logs" / "redo.log", os.urandom(MiB + 4096))
    write(target / "cut-me", os.urandom(2 * MiB + 77))
    write(target / "delete-me", os.urandom(300_000))
    os.chmod(target / "notes.txt", 0o640)
    os.symlink("notes.txt", target / "notes.link")
    os.link(target / "table.ibd", target / "table.hard")


def change(target: Path) -> None:
    """Overwrite inside a middle chunk, append, truncate, delete, add."""
    write(target / "table.ibd", b"X" * 200_000, "r+b", offset=MiB + 500_000)
    write(target / "logs" / "redo.log", os.urandom(MiB), "ab")
    os.truncate(target / "cut-me", 100_000)
    (target / "delete-me").unlink()
    write(target / "notes.txt", b"second words\n")
    write(target / "added.bin", os.urandom(MiB + 200_000))


def restage(vol: Volume, pod: str) -> Path:
    """Unmount the volume from the node and mount it again: reads come from the
    chunk servers, not from the caches of the old mount."""
    vol.unmount()
    vol.stage()
    return vol.publish(pod)


def listed(plugin, **request) -> list[str]:
    found = plugin.controller.ListSnapshots(csi.ListSnapshotsRequest(**request), timeout=60)
    return [e.snapshot.snapshot_id for e in found.entries]


def test_controller_advertises_snapshots_and_clones(plugin):
    found = plugin.controller.ControllerGetCapabilities(csi.ControllerGetCapabilitiesRequest())
    kinds = {c.rpc.type for c in found.capabilities}
    assert {RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.CLONE_VOLUME} <= kinds


def test_restore_and_clone_hold_the_data_of_their_moment(plugin, made):
    source, src = made.mounted("pvc-snap-source", 32 * MiB)
    fill(src)
    before = digest(src)
    used = usage(source.stats(src), csi.VolumeUsage.BYTES).used

    started = time.time_ns()
    snap = made.snapshot("snapshot-of-source", source.id)
    assert snap.ready_to_use and snap.source_volume_id == source.id
    assert snap.snapshot_id == "snapshot-of-source"
    assert snap.size_bytes == used > 6 * MiB, "a snapshot's size is what the volume held"
    assert started <= snap.creation_time.ToNanoseconds() <= time.time_ns()
    snapshot_dir = plugin.cluster.mount / ".dfs-csi" / "snapshots" / snap.snapshot_id
    assert digest(snapshot_dir) == before

    change(src)
    now = digest(src)
    assert now != before
    assert digest(snapshot_dir) == before, "writes to the volume must not reach its snapshot"

    restored, res = made.mounted("pvc-snap-restored", 16 * MiB,
                                 source=from_snapshot(snap.snapshot_id))
    assert restored.volume.content_source == from_snapshot(snap.snapshot_id)
    assert restored.volume.capacity_bytes == 16 * MiB
    assert digest(res) == before
    stats = restored.stats(res)
    assert usage(stats, csi.VolumeUsage.BYTES).total == 16 * MiB, "the quota is its own"
    assert usage(stats, csi.VolumeUsage.BYTES).used == snap.size_bytes

    clone, cln = made.mounted("pvc-snap-clone", 32 * MiB, source=from_volume(source.id))
    assert clone.volume.content_source == from_volume(source.id)
    assert digest(cln) == now

    # Each copy is independent: a write to one shows in none of the others.
    write(cln / "table.ibd", b"C" * 4096, "r+b", offset=2 * MiB)
    write(cln / "only-in-clone", b"clone")
    write(src / "logs" / "redo.log", b"S" * 4096, "r+b", offset=0)
    write(res / "table.ibd", b"R" * 4096, "r+b", offset=0)
    assert digest(snapshot_dir) == before
    assert "only-in-clone" not in digest(src)
    source_now = digest(src)
    clone_now = digest(cln)
    restored_now = digest(res)
    assert len({source_now["table.ibd"], clone_now["table.ibd"],
                restored_now["table.ibd"], before["table.ibd"]}) == 4
    assert source_now["logs/redo.log"] != clone_now["logs/redo.log"] == now["logs/redo.log"]

    # Deleting the snapshot leaves the volume restored from it whole, read
    # afresh from the chunk servers; so does deleting the clone's source.
    for _ in range(2):
        plugin.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(
            snapshot_id=snap.snapshot_id), timeout=60)
    wait_for(lambda: not snapshot_dir.exists(), 10, "the snapshot's directory to go")
    assert listed(plugin, snapshot_id=snap.snapshot_id) == []
    assert digest(restage(restored, "pvc-snap-restored-again")) == restored_now
    source.teardown()
    made.volumes.remove(source)
    assert digest(restage(clone, "pvc-snap-clone-again")) == clone_now


def test_a_snapshot_taken_while_a_pod_writes(plugin, made):
    """The pod's writes go on across the snapshot (their write leases end and
    are granted again, which is no fencing), and the snapshot holds a prefix of
    what the pod wrote."""
    vol, target = made.mounted("pvc-busy", 16 * MiB)
    data = target / "busy.log"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(data), str(6 * MiB)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: data.exists() and data.stat().st_size >= 2 * MiB, 60,
                 "the writer to write 2 MiB")
        snap = made.snapshot("snapshot-busy", vol.id)
        assert writer.poll() is None, "the snapshot must not stop the writer"
        out, err = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, err
    assert int(out) == 6 * MiB and data.stat().st_size == 6 * MiB
    copied = (plugin.cluster.mount / ".dfs-csi" / "snapshots" / snap.snapshot_id /
              "busy.log").read_bytes()
    assert 2 * MiB <= len(copied) < 6 * MiB and copied == b"w" * len(copied)


def test_a_snapshot_outlives_its_volume(plugin, made):
    gone, target = made.mounted("pvc-short-lived", 8 * MiB)
    write(target / "kept.bin", os.urandom(2 * MiB + 5))
    kept = digest(target)
    # An unsafe name gets a hashed id, still under /.dfs-csi/snapshots/.
    snap = made.snapshot("../nightly/short lived", gone.id)
    assert snap.snapshot_id.startswith("_") and "/" not in snap.snapshot_id
    gone.teardown()
    made.volumes.remove(gone)
    assert listed(plugin, source_volume_id=gone.id) == [snap.snapshot_id]

    _, target = made.mounted("pvc-from-the-past", 4 * MiB,
                             source=from_snapshot(snap.snapshot_id),
                             parameters={"replicas": "1"})
    assert digest(target) == kept
    write(target / "kept.bin", b"new", "ab")


def test_snapshot_and_restore_are_idempotent_by_name(plugin, made):
    first = made.volume("pvc-idem-a", 8 * MiB)
    other = made.volume("pvc-idem-b", 8 * MiB)
    write(plugin.cluster.mount / "volumes" / first.id / "data", os.urandom(MiB + 1))
    snap = made.snapshot("snapshot-idem", first.id)
    assert made.snapshot("snapshot-idem", first.id) == snap
    assert code(plugin.controller.CreateSnapshot, csi.CreateSnapshotRequest(
        name="snapshot-idem", source_volume_id=other.id)) == Code.ALREADY_EXISTS

    restored = made.volume("pvc-idem-restored", 8 * MiB, source=from_snapshot(snap.snapshot_id))
    again = plugin.controller.CreateVolume(csi.CreateVolumeRequest(
        name="pvc-idem-restored", volume_capabilities=[GOOD],
        capacity_range=csi.CapacityRange(required_bytes=8 * MiB),
        volume_content_source=from_snapshot(snap.snapshot_id)), timeout=60).volume
    assert again == restored.volume
    for clash in (from_volume(first.id), None):
        assert code(plugin.controller.CreateVolume, csi.CreateVolumeRequest(
            name="pvc-idem-restored", volume_capabilities=[GOOD],
            capacity_range=csi.CapacityRange(required_bytes=8 * MiB),
            volume_content_source=clash)) == Code.ALREADY_EXISTS
    assert code(plugin.controller.CreateVolume, csi.CreateVolumeRequest(
        name=first.volume.volume_id, volume_capabilities=[GOOD],
        capacity_range=csi.CapacityRange(required_bytes=8 * MiB),
        volume_content_source=from_snapshot(snap.snapshot_id))) == Code.ALREADY_EXISTS

    got = plugin.controller.ControllerGetVolume(csi.ControllerGetVolumeRequest(
        volume_id=restored.id), timeout=60).volume
    assert got.content_source == from_snapshot(snap.snapshot_id)
    entries = plugin.controller.ListVolumes(csi.ListVolumesRequest(), timeout=60).entries
    [entry] = [e for e in entries if e.volume.volume_id == restored.id]
    assert entry.volume.content_source == from_snapshot(snap.snapshot_id)


def test_list_snapshots_filters_and_pages(plugin, made):
    a = made.volume("pvc-list-a", 4 * MiB)
    b = made.volume("pvc-list-b", 4 * MiB)
    of_a = [made.snapshot(f"snapshot-list-a{i}", a.id).snapshot_id for i in range(4)]
    of_b = made.snapshot("snapshot-list-b", b.id).snapshot_id

    assert set(of_a + [of_b]) <= set(listed(plugin))
    assert listed(plugin, source_volume_id=a.id) == sorted(of_a)
    assert listed(plugin, source_volume_id=b.id) == [of_b]
    assert listed(plugin, snapshot_id=of_b) == [of_b]
    assert listed(plugin, snapshot_id=of_b, source_volume_id=b.id) == [of_b]
    assert listed(plugin, snapshot_id=of_b, source_volume_id=a.id) == []
    assert listed(plugin, snapshot_id="snapshot-that-never-was") == []
    assert listed(plugin, source_volume_id="pvc-that-never-was") == []
    entry = plugin.controller.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=of_b)).entries
    assert entry[0].snapshot.source_volume_id == b.id and entry[0].snapshot.ready_to_use

    seen, token, deleted = [], "", False
    while True:
        page = plugin.controller.ListSnapshots(csi.ListSnapshotsRequest(
            source_volume_id=a.id, max_entries=1, starting_token=token), timeout=60)
        assert len(page.entries) <= 1
        seen += [e.snapshot.snapshot_id for e in page.entries]
        token = page.next_token
        if not token:
            break
        if not deleted:
            # The token names the snapshot just listed: deleting it must not
            # lose the place.
            plugin.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=seen[-1]))
            deleted = True
    assert seen == sorted(of_a)


def test_unfinished_creations_are_made_again(plugin, made):
    """A directory without its record is what a creation cut short leaves; the
    next call replaces it with the real thing."""
    source = made.volume("pvc-unfinished-source", 4 * MiB)
    write(plugin.cluster.mount / "volumes" / source.id / "real", b"from the volume")
    leftovers = [plugin.cluster.mount / ".dfs-csi" / "snapshots" / "snapshot-unfinished",
                 plugin.cluster.mount / "volumes" / "pvc-unfinished"]
    for leftover in leftovers:
        write(leftover / "stale", b"left by a crash")

    snap = made.snapshot("snapshot-unfinished", source.id)
    restored = made.volume("pvc-unfinished", 4 * MiB, source=from_snapshot(snap.snapshot_id))
    for leftover in leftovers:
        wait_for(lambda: not (leftover / "stale").exists(), 10, f"{leftover} to be made again")
        assert (leftover / "real").read_bytes() == b"from the volume"
    assert restored.volume.content_source == from_snapshot(snap.snapshot_id)


def snapshot_cases(vol, snap) -> list:
    create = csi.CreateVolumeRequest
    rng = csi.CapacityRange

    def restore(name, source, size=8 * MiB):
        return create(name=name, volume_capabilities=[GOOD], volume_content_source=source,
                      capacity_range=rng(required_bytes=size))

    return [
        ("CreateSnapshot", csi.CreateSnapshotRequest(source_volume_id=vol.id),
         Code.INVALID_ARGUMENT),
        ("CreateSnapshot", csi.CreateSnapshotRequest(name="snapshot-nosource"),
         Code.INVALID_ARGUMENT),
        ("CreateSnapshot", csi.CreateSnapshotRequest(name="s" * 129, source_volume_id=vol.id),
         Code.INVALID_ARGUMENT),
        ("CreateSnapshot", csi.CreateSnapshotRequest(
            name="snapshot-params", source_volume_id=vol.id, parameters={"replicas": "2"}),
         Code.INVALID_ARGUMENT),
        ("CreateSnapshot", csi.CreateSnapshotRequest(
            name="snapshot-missing", source_volume_id="pvc-missing"), Code.NOT_FOUND),
        ("DeleteSnapshot", csi.DeleteSnapshotRequest(), Code.INVALID_ARGUMENT),
        ("ListSnapshots", csi.ListSnapshotsRequest(max_entries=-1), Code.INVALID_ARGUMENT),
        ("ListSnapshots", csi.ListSnapshotsRequest(starting_token="invalid-token"),
         Code.ABORTED),
        ("CreateVolume", restore("pvc-from-nothing", Content()), Code.INVALID_ARGUMENT),
        ("CreateVolume", restore("pvc-from-missing-snapshot", from_snapshot("snapshot-missing")),
         Code.NOT_FOUND),
        ("CreateVolume", restore("pvc-from-missing-volume", from_volume("pvc-missing")),
         Code.NOT_FOUND),
        ("CreateVolume", restore("pvc-from-empty-id", from_snapshot("")),
         Code.INVALID_ARGUMENT),
        # The snapshot holds 3 MiB; the volume's capacity is 8 MiB.
        ("CreateVolume", restore("pvc-restore-too-small", from_snapshot(snap.snapshot_id),
                                 2 * MiB), Code.OUT_OF_RANGE),
        ("CreateVolume", restore("pvc-clone-too-small", from_volume(vol.id), 4 * MiB),
         Code.OUT_OF_RANGE),
    ]


def test_snapshot_errors(plugin, made):
    vol = made.volume("pvc-snap-errors", 8 * MiB)
    write(plugin.cluster.mount / "volumes" / vol.id / "three", os.urandom(3 * MiB))
    snap = made.snapshot("snapshot-errors", vol.id)
    assert snap.size_bytes == 3 * MiB
    before = sorted(os.listdir(plugin.cluster.mount / "volumes"))
    failures = []
    for rpc, request, expected in snapshot_cases(vol, snap):
        got = code(getattr(plugin.controller, rpc), request)
        if got != expected:
            failures.append(f"{rpc}({request}) gave {got.name}, want {expected.name}")
    assert not failures, "\n".join(failures)
    assert sorted(os.listdir(plugin.cluster.mount / "volumes")) == before, \
        "a refused CreateVolume leaves nothing behind"
    # Deleting what does not exist succeeds; exactly as large as the source is enough.
    plugin.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id="snapshot-missing"))
    made.volume("pvc-restore-exact", 3 * MiB, source=from_snapshot(snap.snapshot_id))
    made.volume("pvc-clone-exact", 8 * MiB, source=from_volume(vol.id))


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_snapshot_ids_cannot_reach_outside_snapshots(plugin, bad_id):
    for rpc, request in [
        (plugin.controller.DeleteSnapshot, csi.DeleteSnapshotRequest(snapshot_id=bad_id)),
        (plugin.controller.ListSnapshots, csi.ListSnapshotsRequest(snapshot_id=bad_id)),
        (plugin.controller.ListSnapshots, csi.ListSnapshotsRequest(source_volume_id=bad_id)),
        (plugin.controller.CreateSnapshot, csi.CreateSnapshotRequest(
            name="snapshot-bad-source", source_volume_id=bad_id)),
        (plugin.controller.CreateVolume, csi.CreateVolumeRequest(
            name="pvc-bad-source", volume_capabilities=[GOOD],
            volume_content_source=from_snapshot(bad_id))),
        (plugin.controller.CreateVolume, csi.CreateVolumeRequest(
            name="pvc-bad-source", volume_capabilities=[GOOD],
            volume_content_source=from_volume(bad_id))),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            rpc(request, timeout=60)
        assert info.value.code() == Code.INVALID_ARGUMENT, request
