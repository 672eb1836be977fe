"""Chunk servers killed (SIGKILL) or frozen (SIGSTOP) under clients: nothing
acknowledged is lost, reads go on from the other replicas, R is restored, and
a server that comes back with old replicas never serves them."""

import os
import signal

import pytest

from conftest import TEST_CHUNK_SIZE, start_cluster
from faults import (MiB, addr_of, alive, chunks_of, healthy, kill_server, name_of,
                    replica_version, restart_server, signal_server, status, wait_for)


@pytest.fixture
def fault_cluster(tmp_path):
    cluster = start_cluster(tmp_path, heartbeat_timeout=2)
    yield cluster
    cluster.teardown()


def settled(ref) -> bool:
    st = status(ref)
    return st["under_replicated"] == 0 and st["replicating"] == 0


@pytest.mark.timeout(120)
def test_sigkill_during_writes_and_reads_loses_nothing(fault_cluster):
    c, ref = fault_cluster, fault_cluster.ref
    old_data = os.urandom(3 * MiB + 17)
    (c.mnt / "old").write_bytes(old_data)
    data = os.urandom(6 * MiB + 123)
    with open(c.mnt / "big", "wb") as f:
        f.write(data[:2 * MiB])
        os.fsync(f.fileno())
        kill_server(c.local, "cs1")
        reader = c.mount()
        assert (reader / "old").read_bytes() == old_data, "reads go on from the others"
        f.write(data[2 * MiB:])
        os.fsync(f.fileno())
    assert (c.mount() / "big").read_bytes() == data

    wait_for(lambda: not alive(ref, addr_of(c.local, "cs1")), 10, "cs1 to be declared dead")
    wait_for(lambda: settled(ref), 60, "re-replication to restore 2 replicas")
    for name in ("big", "old"):
        for chunk in chunks_of(ref, f"/{name}", TEST_CHUNK_SIZE):
            assert len(chunk["servers"]) == 2
            assert addr_of(c.local, "cs1") not in [a for _, a in chunk["servers"]]
    # With cs1 gone every chunk is on cs2 and cs3; killing cs2 leaves cs3
    # alone, so what it holds must be true copies.
    kill_server(c.local, "cs2")
    last = c.mount()
    assert (last / "big").read_bytes() == data
    assert (last / "old").read_bytes() == old_data


@pytest.mark.timeout(120)
def test_server_back_with_stale_replicas_never_serves_them(fault_cluster):
    c, ref = fault_cluster, fault_cluster.ref
    first = os.urandom(2 * MiB + 5)
    (c.mnt / "f").write_bytes(first)
    chunks = chunks_of(ref, "/f", TEST_CHUNK_SIZE)
    victim = name_of(c.local, chunks[0]["servers"][0][1])
    kill_server(c.local, victim)
    wait_for(lambda: not alive(ref, addr_of(c.local, victim)), 10, f"{victim} to be dead")

    second = os.urandom(len(first))
    with open(c.mnt / "f", "r+b") as f:
        f.write(second)
        os.fsync(f.fileno())
    wait_for(lambda: settled(ref), 60, "re-replication")
    current = {ch["chunk"]: ch["version"] for ch in chunks_of(ref, "/f", TEST_CHUNK_SIZE)}

    restart_server(c.local, victim)
    wait_for(lambda: alive(ref, addr_of(c.local, victim)), 15, f"{victim} to return")
    assert (c.mount() / "f").read_bytes() == second
    victim_dir = c.local.dir / victim / "data"
    wait_for(lambda: all(replica_version(victim_dir, chunk) in (None, version)
                         for chunk, version in current.items()),
             15, "the stale replicas to be deleted")
    for chunk in chunks_of(ref, "/f", TEST_CHUNK_SIZE):
        assert chunk["version"] == current[chunk["chunk"]]
    assert (c.mount() / "f").read_bytes() == second


@pytest.mark.timeout(120)
def test_frozen_server_is_dropped_and_fenced_when_it_thaws(fault_cluster):
    c, ref = fault_cluster, fault_cluster.ref
    first = os.urandom(MiB + 99)
    (c.mnt / "f").write_bytes(first)
    chunk = chunks_of(ref, "/f", TEST_CHUNK_SIZE)[0]
    victim = name_of(c.local, chunk["servers"][0][1])
    signal_server(c.local, victim, signal.SIGSTOP)
    try:
        wait_for(lambda: not alive(ref, addr_of(c.local, victim)), 10, f"{victim} to be dead")
        second = os.urandom(len(first))
        with open(c.mnt / "f", "r+b") as f:
            f.write(second)
            os.fsync(f.fileno())
        assert (c.mount() / "f").read_bytes() == second
    finally:
        signal_server(c.local, victim, signal.SIGCONT)
    wait_for(lambda: alive(ref, addr_of(c.local, victim)), 15, f"{victim} to thaw")
    now = chunks_of(ref, "/f", TEST_CHUNK_SIZE)[0]
    victim_dir = c.local.dir / victim / "data"
    wait_for(lambda: replica_version(victim_dir, chunk["chunk"]) in (None, now["version"]),
             15, "the thawed server's stale replica to go")
    assert now["version"] > chunk["version"]
    assert (c.mount() / "f").read_bytes() == second
    wait_for(lambda: healthy(ref, 3), 60, "the cluster to heal")
