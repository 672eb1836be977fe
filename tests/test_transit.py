"""File data carries its CRC32C between processes (dfs/transit.py): a chunk
server refuses a write whose data does not match the CRC it came with, read
replies carry theirs, and damage on the wire (a proxy flipping one byte) is
caught and the data sent or fetched again, never stored or returned."""

import errno
import os
from contextlib import contextmanager

import pytest
from crc32c import crc32c

from conftest import TEST_CHUNK_SIZE, Cluster
from chunkserver.chunkfile import BLOCK
from dfs import transit
from dfs.errors import DfsError
from faults import (Tamper, chunk_call, chunks_of, copy_matches, start_metalogger, stop_process,
                    wait_for)


@contextmanager
def behind(tmp_path, tamper: Tamper):
    """A cluster of one chunk server (one replica per chunk) reached by the
    mount and the metaserver through `tamper`."""
    cluster = Cluster(tmp_path, chunkservers=1, replicas=1,
                      chunkserver_args={"advertise": tamper.addr})
    try:
        cluster.up()
        tamper.target = cluster.local.load().chunkservers[0]
        yield cluster, tamper
    finally:
        cluster.teardown()
        tamper.close()


@pytest.fixture
def one_server(tmp_path):
    with behind(tmp_path, Tamper()) as both:
        yield both


def replica_of(cluster, path: str) -> dict:
    reply = chunks_of(cluster.ref, path, TEST_CHUNK_SIZE)[0]
    return {"chunk": reply["chunk"], "version": reply["version"]}


def test_writes_whose_data_does_not_match_its_crc_are_refused_whole(one_server):
    cluster, tamper = one_server
    original = os.urandom(256 * 1024 + 5000)
    (cluster.mnt / "f").write_bytes(original)
    replica = replica_of(cluster, "/f")
    server = cluster.local.load().chunkservers[0]

    def read(offset: int = 0, length: int = len(original)) -> bytes:
        reply = chunk_call(cluster.ref, server, "read", offset=offset, length=length,
                           **replica)
        data = reply["data"]
        assert reply["crcs"] == [crc32c(data[start:stop])
                                 for start, stop in transit.spans(offset, len(data))]
        return data

    new = os.urandom(4096)
    with pytest.raises(DfsError) as refused:
        chunk_call(cluster.ref, server, "write", offset=0, data=new, crc=crc32c(new) ^ 1,
                   **replica)
    assert refused.value.errno == errno.EBADMSG and "damaged" in refused.value.message
    with pytest.raises(DfsError) as refused:
        chunk_call(cluster.ref, server, "write_extents", **replica, extents=[
            [0, new, crc32c(new)], [8192, new, crc32c(new) ^ 1]])
    assert refused.value.errno == errno.EBADMSG
    with pytest.raises(DfsError) as refused:
        chunk_call(cluster.ref, server, "write_extents", **replica, extents=[[0, new, "x"]])
    assert refused.value.errno == errno.EINVAL
    assert read() == original
    # With a matching CRC, and with none (a client older than CRCs), it is written.
    chunk_call(cluster.ref, server, "write", offset=0, data=new, crc=crc32c(new), **replica)
    chunk_call(cluster.ref, server, "write_extents", **replica, extents=[[8192, new]])
    now = new + original[4096:8192] + new + original[12288:]
    assert read() == now
    # Pieces cut where blocks begin; zeros past the end.
    assert read(1000, 200_000) == now[1000:201_000]
    assert read(100_000, 200_000) == now[100_000:] + bytes(200_000 - (len(now) - 100_000))
    assert tamper.damaged == {"in": 0, "out": 0}


def test_damage_on_the_wire_is_caught_and_the_data_sent_again(one_server):
    cluster, tamper = one_server
    data = os.urandom(2 * TEST_CHUNK_SIZE)
    tamper.arm("in")
    (cluster.mnt / "f").write_bytes(data)
    assert tamper.damaged["in"] == 1
    log = (cluster.local.dir / "cs1" / "log").read_text()
    assert "write refused: its data arrived damaged" in log

    # A mount of its own reads it cold, through the chunk server's replies.
    tamper.arm("out")
    fresh = cluster.mount()
    assert (fresh / "f").read_bytes() == data
    assert tamper.damaged["out"] == 1
    wait_for(lambda: "damaged on its way" in (fresh.parent / f"{fresh.name}.log").read_text(),
             10, "the mount to log the damaged reply")


def test_a_replica_piece_damaged_between_chunk_servers_is_fetched_again(one_server):
    cluster, tamper = one_server
    data = os.urandom(TEST_CHUNK_SIZE)
    (cluster.mnt / "f").write_bytes(data)
    layout = cluster.local.load()
    layout.chunkservers.append("127.0.0.1:0")
    layout.chunkserver_args = {}
    cluster.local.save(layout)
    cluster.local.start_chunkserver(layout, 1)
    plain = cluster.local.load().chunkservers[1]

    tamper.arm("out")
    cluster.dfs("replicas", "set", *cluster.cli_args, "/f", "2")
    wait_for(lambda: len(chunks_of(cluster.ref, "/f", TEST_CHUNK_SIZE)[0]["servers"]) == 2,
             60, "the second copy")
    replica = replica_of(cluster, "/f")
    assert tamper.damaged["out"] == 1
    copy = chunk_call(cluster.ref, plain, "read", offset=0, length=len(data), **replica)
    assert copy["data"] == data
    assert "replica piece arrived damaged" in (cluster.local.dir / "cs2" / "log").read_text()


def test_read_replies_are_cut_at_the_chunk_servers_blocks():
    assert transit.BLOCK_SIZE == BLOCK
    assert transit.spans(1000, 200_000) == [(0, BLOCK - 1000), (BLOCK - 1000, 2 * BLOCK - 1000),
                                            (2 * BLOCK - 1000, 3 * BLOCK - 1000),
                                            (3 * BLOCK - 1000, 200_000)]
    assert transit.spans(BLOCK, 2 * BLOCK) == [(0, BLOCK), (BLOCK, 2 * BLOCK)]
    assert transit.spans(5, 0) == []


def test_metadata_copies_damaged_on_their_way_are_fetched_again(tmp_path):
    """A metalogger's first copy of the database and the commits it follows,
    and a backup fetched by `dfs backup get`, through a proxy in front of
    the metaserver that damages one large reply each time it is armed."""
    tamper = Tamper()
    # Replies to a metalogger are smaller than file data.
    tamper.LARGE = 16 * 1024
    cluster = Cluster(tmp_path, chunkservers=1, replicas=1)
    logger = None
    try:
        cluster.up()
        tamper.target = cluster.local.load().meta
        for i in range(400):
            (cluster.mnt / f"file-{i:04}").touch()
        folder = tmp_path / "logger"
        tamper.arm("out")
        logger = start_metalogger(cluster.local, folder, "--meta", tamper.addr)
        wait_for(lambda: tamper.damaged["out"] == 1, 30, "the copy to be damaged once")
        wait_for(lambda: copy_matches(cluster.local, folder), 60, "the metalogger's copy")
        # One commit larger than the frames the proxy damages: an xattr of 60 KB.
        tamper.arm("out")
        os.setxattr(cluster.mnt / "file-0000", "user.big", os.urandom(60_000))
        wait_for(lambda: tamper.damaged["out"] == 2, 30, "the commit to be damaged once")
        wait_for(lambda: copy_matches(cluster.local, folder), 60, "the commit to be copied")
        log = (tmp_path / "logger.log").read_text()
        assert "damaged on its way" in log and "piece of a copy arrived damaged" in log

        name = cluster.dfs("backup", "now", *cluster.cli_args).stdout.split()[0]
        tamper.arm("out")
        cluster.dfs("backup", "get", "--meta", tamper.addr, "--secret-file",
                    str(cluster.local.dir / "secret"), name, str(tmp_path))
        assert tamper.damaged["out"] == 3
        assert (tmp_path / name).read_bytes() == (
            cluster.local.dir / "meta" / "data" / "backups" / name).read_bytes()
    finally:
        if logger is not None:
            stop_process(logger)
        cluster.teardown()
        tamper.close()


@pytest.mark.parametrize("protocol", [1, 2])
def test_writes_carry_crcs_to_servers_that_take_them(tmp_path, protocol):
    """A server greeting with protocol 1 (older than CRCs, which refuses them
    as unknown fields) gets writes without; one of 2 gets every write with."""
    with behind(tmp_path, Tamper(greet_as=protocol)) as (cluster, tamper):
        data = os.urandom(3 * TEST_CHUNK_SIZE // 2)
        with open(cluster.mnt / "f", "wb") as f:
            f.write(data)
            f.flush()
            for offset in range(0, len(data), 3 * 4096):
                os.pwrite(f.fileno(), b"x" * 100, offset)
            os.fsync(f.fileno())
            # A lone write goes as `write`, scattered ones as `write_extents`.
            os.pwrite(f.fileno(), b"y" * 10, 5)
        assert {op for op, _ in tamper.writes} == {"write", "write_extents"}
        assert {crc for _, crc in tamper.writes} == {protocol >= transit.PROTOCOL}
        expected = bytearray(data)
        for offset in range(0, len(data), 3 * 4096):
            expected[offset:offset + 100] = b"x" * 100
        expected[5:15] = b"y" * 10
        assert (cluster.mount() / "f").read_bytes() == expected

