"""Balancing: a chunk server added to a cluster gets its share of the chunks
already written, each chunk keeping its copies all along. Each server has a
disk of its own here (a tmpfs), as balancing goes by how full disks are."""

import hashlib
import os
from contextlib import ExitStack

from conftest import TEST_CHUNK_SIZE, Cluster
from faults import addr_of, chunks_of, status, tiny_disk, wait_for

DISK = 64 << 20


def fullness(cluster) -> dict[str, float]:
    return {cs["addr"]: cs["used"] / cs["capacity"]
            for cs in status(cluster.ref)["chunkservers"] if cs["alive"]}


def test_a_new_server_takes_its_share_and_every_chunk_keeps_two_copies(tmp_path):
    with ExitStack() as disks:
        cluster = Cluster(tmp_path, chunkservers=2, heartbeat_timeout=2)
        for n in (1, 2, 3):
            disks.enter_context(tiny_disk(cluster.local.dir / f"cs{n}" / "data", "64m"))
        try:
            cluster.up()
            digests = {}
            for i in range(12):
                data = os.urandom(2 * TEST_CHUNK_SIZE)
                (cluster.mnt / f"f{i}").write_bytes(data)
                digests[f"f{i}"] = hashlib.sha256(data).hexdigest()
            before = fullness(cluster)
            assert min(before.values()) > 0.3
            cluster.local.up(str(cluster.mnt), chunkservers=3)
            cs3 = addr_of(cluster.local, "cs3")
            wait_for(lambda: cs3 in fullness(cluster), 20, "cs3 to register")

            def holders() -> list[set]:
                return [{addr for _, addr in reply["servers"]} for name in digests
                        for reply in chunks_of(cluster.ref, "/" + name, TEST_CHUNK_SIZE)]

            def even() -> bool:
                shares = fullness(cluster).values()
                st = status(cluster.ref)
                return (max(shares) - min(shares) <= 0.1 and st["balancing"] == 0
                        and st["under_replicated"] == 0 and all(len(h) == 2 for h in holders()))

            wait_for(even, 120, "the three disks to be about as full, two copies of each chunk")
            placed = holders()
            assert sum(cs3 in h for h in placed) >= len(placed) // 4
            for name, digest in digests.items():
                assert hashlib.sha256((cluster.mnt / name).read_bytes()).hexdigest() == digest
            assert "health: ok" in cluster.dfs("status", *cluster.cli_args).stdout
        finally:
            cluster.teardown()
