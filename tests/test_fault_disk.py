"""Full disks and garbage collection: new chunks go to servers with room,
ENOSPC comes cleanly when there is none anywhere and damages nothing already
written; deleted and truncated data is reclaimed, referenced data never."""

import errno
import os
import shutil
from contextlib import ExitStack

import pytest

from conftest import TEST_CHUNK_SIZE, Cluster
from faults import MiB, chunks_of, name_of, replica_version, tiny_disk, wait_for


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("mount", "umount")),
    reason="needs root and mount and umount")

@pytest.fixture
def disks(tmp_path):
    """Chunk server data folders on tmpfs: cs1 tiny, or all tiny (per test)."""
    stack = ExitStack()
    clusters = []

    def make(sizes: list[str | None]) -> Cluster:
        for i, size in enumerate(sizes):
            if size:
                stack.enter_context(tiny_disk(tmp_path / "data" / f"cs{i + 1}" / "data", size))
        cluster = Cluster(tmp_path, chunkservers=len(sizes), heartbeat_timeout=2)
        clusters.append(cluster)
        return cluster.up()

    with stack:
        try:
            yield make
        finally:
            for cluster in clusters:
                cluster.teardown()


@pytest.mark.timeout(120)
def test_new_chunks_go_to_servers_with_room(disks):
    c = disks(["3m", None, None])
    files = {f"f{i}": os.urandom(MiB) for i in range(8)}
    for name, data in files.items():
        (c.mnt / name).write_bytes(data)
    reader = c.mount()
    for name, data in files.items():
        assert (reader / name).read_bytes() == data
    on_tiny = sum(1 for name in files
                  for chunk in chunks_of(c.ref, f"/{name}", TEST_CHUNK_SIZE)
                  if name_of(c.local, chunk["servers"][0][1]) == "cs1"
                  or name_of(c.local, chunk["servers"][-1][1]) == "cs1")
    assert on_tiny <= 2, "the tiny server holds no more than fits"


@pytest.mark.timeout(120)
def test_no_room_anywhere_is_enospc_and_damages_nothing(disks):
    c = disks(["4m", "4m", "4m"])
    kept = os.urandom(MiB + 4096)
    (c.mnt / "kept").write_bytes(kept)
    big = os.urandom(16 * MiB)
    with pytest.raises(OSError) as caught:
        with open(c.mnt / "big", "wb") as f:
            for offset in range(0, len(big), MiB):
                f.write(big[offset:offset + MiB])
            os.fsync(f.fileno())
    assert caught.value.errno == errno.ENOSPC
    assert (c.mount() / "kept").read_bytes() == kept

    # Deleting frees the room again (garbage collection reaches the disks).
    os.unlink(c.mnt / "big")
    again = os.urandom(MiB)

    def fits() -> bool:
        try:
            (c.mnt / "again").write_bytes(again)
            return True
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return False

    wait_for(fits, 30, "space to come back after the delete", interval=1.0)
    reader = c.mount()
    assert (reader / "kept").read_bytes() == kept
    assert (reader / "again").read_bytes() == again


@pytest.mark.timeout(120)
def test_garbage_collection_reclaims_deleted_and_truncated_chunks_only(disks):
    c = disks([None, None, None])
    data = {name: os.urandom(3 * MiB) for name in ("deleted", "truncated", "kept")}
    for name, payload in data.items():
        (c.mnt / name).write_bytes(payload)
    os.link(c.mnt / "kept", c.mnt / "kept-link")
    chunks = {name: chunks_of(c.ref, f"/{name}", TEST_CHUNK_SIZE) for name in data}

    os.unlink(c.mnt / "deleted")
    os.unlink(c.mnt / "kept")
    os.truncate(c.mnt / "truncated", MiB + 100)

    def on_disk(chunk: dict) -> list[int | None]:
        return [replica_version(c.local.dir / name_of(c.local, addr) / "data", chunk["chunk"])
                for _, addr in chunk["servers"]]

    doomed = chunks["deleted"] + chunks["truncated"][2:]
    wait_for(lambda: all(v is None for chunk in doomed for v in on_disk(chunk)), 20,
             "the replicas of deleted and cut-off chunks to be removed")
    for chunk in chunks["kept"] + chunks["truncated"][:1]:
        assert all(v == chunk["version"] for v in on_disk(chunk))
    assert all(v is not None for v in on_disk(chunks["truncated"][1]))
    reader = c.mount()
    assert (reader / "kept-link").read_bytes() == data["kept"]
    assert (reader / "truncated").read_bytes() == data["truncated"][:MiB + 100]
