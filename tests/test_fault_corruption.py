"""Silent corruption: bytes flipped in a replica on disk are caught by the
CRCs, reads are served from a good replica, the bad one is reported (status,
logs) and rewritten from a good one; the scrubber finds corruption in data
nobody reads; fsck reports what is wrong and repairs it."""

import errno
import json
import os

import pytest

from conftest import TEST_CHUNK_SIZE, start_cluster
from dfs.errors import DfsError
from faults import (MiB, chunk_call, chunks_of, flip_bytes, healthy, name_of, replica_paths,
                    status, wait_for)


@pytest.fixture
def fault_cluster(tmp_path):
    # Passes back to back: a replica the scrubber verified between its write
    # and the test's corruption would otherwise wait a day for the next.
    cluster = start_cluster(tmp_path, heartbeat_timeout=2,
                            chunkserver_args={"scrub_every": 0})
    yield cluster
    cluster.teardown()


def fsck(cluster, *flags):
    result = cluster.dfs("fsck", *cluster.cli_args, "--json", *flags, check=False)
    return result.returncode, json.loads(result.stdout)


def corrupt_one_replica_per_chunk(cluster, path):
    """Flip bytes in one replica of every chunk (alternating servers); return
    {chunk: name of the server whose replica is bad}."""
    bad = {}
    for k, chunk in enumerate(chunks_of(cluster.ref, path, TEST_CHUNK_SIZE)):
        addr = chunk["servers"][k % 2][1]
        name = name_of(cluster.local, addr)
        flip_bytes(cluster.local.dir / name / "data", chunk["chunk"], 70_000 + k)
        bad[chunk["chunk"]] = (name, addr, chunk["version"])
    return bad


@pytest.mark.timeout(120)
def test_flipped_bytes_are_caught_served_from_a_good_replica_and_repaired(fault_cluster):
    c = fault_cluster
    data = os.urandom(3 * MiB + 333)
    (c.mnt / "f").write_bytes(data)
    bad = corrupt_one_replica_per_chunk(c, "/f")

    assert (c.mount() / "f").read_bytes() == data
    chunk, (name, addr, version) = next(iter(bad.items()))
    with pytest.raises(DfsError) as caught:
        chunk_call(c.ref, addr, "read", chunk=chunk, version=version, offset=0,
                   length=TEST_CHUNK_SIZE)
    # EIO, or ENOENT if the bad replica was already reported and deleted.
    assert caught.value.errno in (errno.EIO, errno.ENOENT)
    assert "checksum mismatch" in (c.local.dir / name / "log").read_text()

    wait_for(lambda: status(c.ref)["bad_replicas"] >= 1, 20, "the bad replica to be reported")
    shown = c.dfs("status", *c.cli_args).stdout
    assert "bad replicas reported" in shown and f"chunk {chunk}" in shown
    assert "bad replica reported" in (c.local.dir / "meta" / "log").read_text()
    # Every bad replica is found (reads or scrubbing), dropped and copied anew.
    wait_for(lambda: status(c.ref)["bad_replicas"] >= len(bad), 30, "all reports")
    wait_for(lambda: healthy(c.ref, 3), 60, "the bad replicas to be rewritten")
    code, report = fsck(c, "--verify")
    assert code == 0 and report["healthy"], report
    assert (c.mount() / "f").read_bytes() == data


@pytest.mark.timeout(120)
def test_scrubber_finds_corruption_in_cold_data(fault_cluster):
    c = fault_cluster
    data = os.urandom(2 * MiB)
    (c.mnt / "cold").write_bytes(data)
    bad = corrupt_one_replica_per_chunk(c, "/cold")
    wait_for(lambda: status(c.ref)["bad_replicas"] >= len(bad), 30,
             "the scrubber to report every bad replica")
    for name, _, _ in bad.values():
        assert "scrub found a bad replica" in (c.local.dir / name / "log").read_text()
    wait_for(lambda: healthy(c.ref, 3), 60, "the bad replicas to be rewritten")
    assert (c.mount() / "cold").read_bytes() == data


@pytest.mark.timeout(120)
def test_fsck_reports_and_repairs(fault_cluster):
    c = fault_cluster
    data = os.urandom(2 * MiB + 1)
    (c.mnt / "f").write_bytes(data)
    code, report = fsck(c)
    assert code == 0 and report["healthy"] and report["chunks_checked"] == 3

    chunks = chunks_of(c.ref, "/f", TEST_CHUNK_SIZE)
    # A missing replica: its files removed behind the chunk server's back.
    gone_name = name_of(c.local, chunks[0]["servers"][0][1])
    for path in replica_paths(c.local.dir / gone_name / "data", chunks[0]["chunk"]):
        path.unlink()
    # An orphan: a replica no file refers to.
    orphan_addr = chunks[1]["servers"][0][1]
    chunk_call(c.ref, orphan_addr, "create", chunk=999_999, version=1)

    code, report = fsck(c)
    kinds = {(p["kind"], p["chunk"]) for p in report["problems"]}
    assert ("missing", chunks[0]["chunk"]) in kinds
    assert ("orphan", 999_999) in kinds
    assert code == 1 and not report["healthy"]

    code, report = fsck(c, "--repair")
    assert all(p["repaired"] for p in report["problems"]
               if p["kind"] in ("missing", "orphan")), report
    wait_for(lambda: healthy(c.ref, 3), 60, "re-replication after the repair")
    wait_for(lambda: fsck(c, "--verify")[0] == 0, 30, "fsck to come back clean")
    assert (c.mount() / "f").read_bytes() == data
    human = c.dfs("fsck", *c.cli_args)
    assert human.returncode == 0 and "healthy" in human.stdout
