"""Chunk servers leaving the cluster (`dfs chunkserver drain`, `resume` and
`remove`) and coming back, on real clusters."""

import hashlib
import os
import threading
import time

import pytest

from chunkserver.chunkstore import ChunkStore
from conftest import TEST_CHUNK_SIZE, start_cluster
from faults import (addr_of, alive, chunks_of, healthy, kill_server, meta_call,
                    restart_server, status, wait_for)

MiB = 1 << 20


@pytest.fixture
def leaving(tmp_path):
    cluster = start_cluster(tmp_path, heartbeat_timeout=2)
    yield cluster
    cluster.teardown()


def server(cluster, name: str) -> dict:
    addr = addr_of(cluster.local, name)
    return next(cs for cs in status(cluster.ref)["chunkservers"] if cs["addr"] == addr)


def held_on_disk(cluster, name: str) -> dict:
    return ChunkStore(cluster.local.dir / name / "data").scan()


def write_files(mnt, count: int) -> dict:
    digests = {}
    for i in range(count):
        data = os.urandom(2 * TEST_CHUNK_SIZE + i)
        (mnt / f"f{i}").write_bytes(data)
        digests[f"f{i}"] = hashlib.sha256(data).hexdigest()
    return digests


def assert_intact(mnt, digests: dict) -> None:
    for name, digest in digests.items():
        assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest, name


def chunk_holders(cluster, names) -> list[set]:
    return [{addr for _, addr in reply["servers"]}
            for name in names for reply in chunks_of(cluster.ref, "/" + name, TEST_CHUNK_SIZE)]


def test_a_drained_server_holds_nothing_and_every_chunk_keeps_its_copies(leaving):
    digests = write_files(leaving.mnt, 6)
    cs1 = addr_of(leaving.local, "cs1")
    assert server(leaving, "cs1")["chunks"] > 0
    out = leaving.dfs("chunkserver", "drain", *leaving.cli_args, "#1").stdout
    assert "is draining" in out and server(leaving, "cs1")["draining"]
    wait_for(lambda: server(leaving, "cs1")["chunks"] == 0, 60, "cs1 to drain")
    for holders in chunk_holders(leaving, digests):
        assert len(holders) == 2 and cs1 not in holders
    wait_for(lambda: not held_on_disk(leaving, "cs1"), 30, "cs1's replicas to be deleted")
    assert "drained: stop it" in leaving.dfs("status", *leaving.cli_args).stdout
    # New chunks go to the servers that stay.
    (leaving.mnt / "after").write_bytes(os.urandom(3 * TEST_CHUNK_SIZE))
    for holders in chunk_holders(leaving, ["after"]):
        assert cs1 not in holders
    assert not held_on_disk(leaving, "cs1")
    os.sync()
    assert_intact(leaving.mnt, digests)


def test_draining_survives_a_metaserver_restart_and_resume_undoes_it(leaving):
    leaving.dfs("chunkserver", "drain", *leaving.cli_args, addr_of(leaving.local, "cs2"))
    kill_server(leaving.local, "meta")
    restart_server(leaving.local, "meta")
    wait_for(lambda: alive(leaving.ref, addr_of(leaving.local, "cs2")), 30, "cs2 to register")
    assert server(leaving, "cs2")["draining"]
    out = leaving.dfs("chunkserver", "resume", *leaving.cli_args, "2").stdout
    assert "takes new chunks again" in out
    assert not server(leaving, "cs2")["draining"]
    # With three servers and two copies, some of many new chunks land on cs2 again.
    write_files(leaving.mnt, 4)
    wait_for(lambda: server(leaving, "cs2")["chunks"] > 0, 10, "a chunk on cs2")


def test_a_chunk_being_written_leaves_a_draining_server_without_failing_its_writer(leaving):
    """The writer keeps a write lease on its chunk all along: the replica on
    the draining server goes by a version move, and the writer asks again."""
    path = leaving.mnt / "busy"
    content = bytearray(os.urandom(TEST_CHUNK_SIZE // 2))
    path.write_bytes(content)
    errors, rounds = [], []
    stop = threading.Event()

    def writer():
        try:
            with open(path, "r+b") as f:
                while not stop.is_set():
                    offset = len(rounds) * 4096 % len(content)
                    block = os.urandom(4096)
                    f.seek(offset)
                    f.write(block)
                    f.flush()
                    os.fsync(f.fileno())
                    content[offset:offset + len(block)] = block
                    rounds.append(offset)
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(rounds) > 10, 10, "the writer to start")
        leaving.dfs("chunkserver", "drain", *leaving.cli_args, "1")
        wait_for(lambda: server(leaving, "cs1")["chunks"] == 0, 60, "cs1 to drain")
        done = len(rounds)
        wait_for(lambda: len(rounds) > done + 10, 10, "the writer to go on")
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    assert path.read_bytes() == bytes(content)
    (holders,) = chunk_holders(leaving, ["busy"])
    assert holders == {addr_of(leaving.local, "cs2"), addr_of(leaving.local, "cs3")}


def test_a_drain_never_leaves_a_chunk_with_fewer_copies(leaving):
    digests = write_files(leaving.mnt, 2)
    leaving.dfs("chunkserver", "drain", *leaving.cli_args, "1")
    leaving.dfs("chunkserver", "drain", *leaving.cli_args, "2")
    cs3 = addr_of(leaving.local, "cs3")
    # Only cs3 stays, and each chunk wants two copies: every chunk gets one on
    # cs3 and keeps one on a draining server.
    wait_for(lambda: all(cs3 in h for h in chunk_holders(leaving, digests)), 60,
             "every chunk to have a copy on cs3")
    for holders in chunk_holders(leaving, digests):
        assert len(holders) >= 2
    assert_intact(leaving.mnt, digests)


def test_remove_refuses_a_live_server_and_forgets_a_stopped_one(leaving):
    digests = write_files(leaving.mnt, 3)
    refused = leaving.dfs("chunkserver", "remove", *leaving.cli_args, "3", check=False)
    assert refused.returncode != 0 and "stop it first" in refused.stderr
    kill_server(leaving.local, "cs3")
    wait_for(lambda: not alive(leaving.ref, addr_of(leaving.local, "cs3")), 20, "cs3 dead")
    out = leaving.dfs("chunkserver", "remove", *leaving.cli_args, "3").stdout
    assert "chunk server #3 removed" in out and "LOST" not in out
    st = status(leaving.ref)
    assert [cs["csid"] for cs in st["chunkservers"]] == [1, 2]
    wait_for(lambda: meta_call(leaving.ref, "status")["under_replicated"] == 0, 60,
             "the chunks cs3 held to be copied again")
    text = leaving.dfs("status", *leaving.cli_args).stdout
    assert "health: ok" in text and "#3" not in text
    assert_intact(leaving.mnt, digests)
    gone = leaving.dfs("chunkserver", "remove", *leaving.cli_args, "3", check=False)
    assert gone.returncode != 0 and "no chunk server 3" in gone.stderr


def test_remove_keeps_a_servers_only_copies_unless_forced(leaving):
    (leaving.mnt / "single").mkdir()
    leaving.dfs("replicas", "set", *leaving.cli_args, "/single", "1")
    (leaving.mnt / "single" / "f").write_bytes(os.urandom(1000))
    (reply,) = chunks_of(leaving.ref, "/single/f", TEST_CHUNK_SIZE)
    (holder,) = [addr for _, addr in reply["servers"]]
    name = f"cs{leaving.local.load().chunkservers.index(holder) + 1}"
    kill_server(leaving.local, name)
    wait_for(lambda: not alive(leaving.ref, holder), 20, f"{name} dead")
    refused = leaving.dfs("chunkserver", "remove", *leaving.cli_args, holder, check=False)
    assert refused.returncode != 0 and "only copy of 1 chunk" in refused.stderr
    out = leaving.dfs("chunkserver", "remove", *leaving.cli_args, holder, "--force").stdout
    assert "1 chunk(s) LOST" in out
    assert "UNAVAILABLE" in leaving.dfs("info", *leaving.cli_args, "/single/f").stdout
    with pytest.raises(OSError):
        (leaving.mnt / "single" / "f").read_bytes()


def test_a_server_back_after_its_chunks_were_copied_again_loses_the_extra_replicas(leaving):
    # Short leases, so that the chunks are cold when cs1 dies: copied without a
    # version move, its replicas are still good when it returns.
    layout = leaving.local.load()
    layout.extra_args["lease_seconds"] = 1
    leaving.local.save(layout)
    kill_server(leaving.local, "meta")
    restart_server(leaving.local, "meta")
    wait_for(lambda: healthy(leaving.ref, 3), 30, "every server to register again")
    digests = write_files(leaving.mnt, 3)
    cs1 = addr_of(leaving.local, "cs1")
    time.sleep(1.5)
    before = [h for h in chunk_holders(leaving, digests) if cs1 in h]
    assert before
    kill_server(leaving.local, "cs1")
    wait_for(lambda: all(len(h - {cs1}) == 2 for h in chunk_holders(leaving, digests)), 60,
             "cs1's chunks to be copied again")
    restart_server(leaving.local, "cs1")
    wait_for(lambda: alive(leaving.ref, cs1), 30, "cs1 to return")
    ids = [reply["chunk"] for name in digests
           for reply in chunks_of(leaving.ref, "/" + name, TEST_CHUNK_SIZE)]

    def on_disk() -> list[int]:
        held = [held_on_disk(leaving, f"cs{n}") for n in (1, 2, 3)]
        return [sum(chunk in disk for disk in held) for chunk in ids]

    # Every chunk goes back to two replicas, on disk as in the table.
    wait_for(lambda: all(len(h) == 2 for h in chunk_holders(leaving, digests))
             and on_disk() == [2] * len(ids), 60, "the extra replicas to be deleted")
    assert_intact(leaving.mnt, digests)
