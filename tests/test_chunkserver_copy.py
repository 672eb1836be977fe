"""The chunk server's `copy`: a replica made from another replica on the same
server (the copy-on-write of a chunk that snapshots share), driven over the
real protocol against a real process."""

import errno
import os
import random

import pytest
import trio

from chunkserver.chunkfile import BLOCK, MAX_CHUNK
from chunkserver.chunkstore import ChunkStore
from dfs.framing import MAX_DATA
from test_chunkserver_support import (MiB, cluster, eventually, expect_errno, flip_byte,
                                      read_all)
from test_chunkserver_support import reap_processes  # noqa: F401 (an autouse fixture)


def allocated(data_dir, chunk: int) -> int:
    """Bytes of disk the replica's data file takes."""
    data_path, _ = ChunkStore(data_dir).paths(chunk)
    return os.stat(data_path).st_blocks * 512


def leftovers(data_dir) -> list[str]:
    return [path.name for path in data_dir.rglob("*.tmp")]


@pytest.mark.timeout(60)
def test_copy_equals_the_source_and_keeps_its_holes(tmp_path):
    rng = random.Random(1)
    head, tail = rng.randbytes(MiB + 3), rng.randbytes(70_000)
    length = 9 * MiB + 1 + len(tail)

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=1, version=3)
            await cs.call("write", chunk=1, version=3, offset=0, data=head)
            # Zeros written out take disk on the source, none on the copy.
            await cs.call("write", chunk=1, version=3, offset=4 * MiB, data=bytes(MAX_DATA))
            await cs.call("write", chunk=1, version=3, offset=9 * MiB + 1, data=tail)

            reply = await cs.call("copy", chunk=2, version=1, source=1, source_version=3)
            assert reply == {"length": length, "version": 1}
            assert await cs.call("chunk_info", chunk=2) == {"length": length, "version": 1}
            assert await read_all(cs, 2, 1, length) == await read_all(cs, 1, 3, length)
            assert (await cs.call("verify", chunk=2))["length"] == length
            assert sorted(map(tuple, (await cs.call("list_chunks"))["chunks"])) == [
                (1, 3), (2, 1)]
            data_dir = c.servers[0].data_dir
            assert allocated(data_dir, 1) >= 5 * MiB
            assert allocated(data_dir, 2) < 2 * MiB, "holes were not kept"
            assert leftovers(data_dir) == []
            assert "replica copied locally" in c.servers[0].log()

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_copy_of_the_first_bytes(tmp_path):
    source = random.Random(2).randbytes(2 * BLOCK + 500)
    cut = BLOCK + 1234

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=1, version=1)
            await cs.call("write", chunk=1, version=1, offset=0, data=source)

            reply = await cs.call("copy", chunk=2, version=1, source=1, source_version=1,
                                  length=cut)
            assert reply == {"length": cut, "version": 1}
            assert await cs.call("chunk_info", chunk=2) == {"length": cut, "version": 1}
            # The block cut in two verifies, and what lies past the cut is zeros.
            assert (await cs.call("verify", chunk=2))["length"] == cut
            got = await cs.call("read", chunk=2, version=1, offset=0, length=3 * BLOCK)
            assert got["data"] == source[:cut] + bytes(3 * BLOCK - cut)
            beyond = await cs.call("read", chunk=2, version=1, offset=cut, length=3000)
            assert beyond["data"] == bytes(3000)

            # Longer than the source: the whole source, no longer.
            reply = await cs.call("copy", chunk=3, version=1, source=1, source_version=1,
                                  length=10 * MiB)
            assert reply == {"length": len(source), "version": 1}
            assert await read_all(cs, 3, 1, len(source)) == source

            reply = await cs.call("copy", chunk=4, version=1, source=1, source_version=1,
                                  length=0)
            assert reply == {"length": 0, "version": 1}
            got = await cs.call("read", chunk=4, version=1, offset=0, length=100)
            assert got["data"] == bytes(100)

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_copy_is_independent_of_its_source(tmp_path):
    rng = random.Random(3)
    original = rng.randbytes(3 * BLOCK)

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=1, version=1)
            await cs.call("write", chunk=1, version=1, offset=0, data=original)
            await cs.call("copy", chunk=2, version=1, source=1, source_version=1)

            await cs.call("write", chunk=1, version=1, offset=100, data=b"source only")
            await cs.call("write", chunk=2, version=1, offset=BLOCK, data=b"copy only")
            source = bytearray(original)
            source[100:111] = b"source only"
            copy = bytearray(original)
            copy[BLOCK:BLOCK + 9] = b"copy only"
            assert await read_all(cs, 1, 1, len(original)) == bytes(source)
            assert await read_all(cs, 2, 1, len(original)) == bytes(copy)

            await cs.call("truncate", chunk=1, version=1, length=10)
            await cs.call("delete", chunk=1)
            assert await cs.call("chunk_info", chunk=2) == {"length": len(original),
                                                            "version": 1}
            assert await read_all(cs, 2, 1, len(original)) == bytes(copy)

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_copy_is_idempotent(tmp_path):
    rng = random.Random(4)
    original = rng.randbytes(2 * BLOCK + 7)

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            data_dir = c.servers[0].data_dir
            await cs.call("create", chunk=1, version=2)
            await cs.call("write", chunk=1, version=2, offset=0, data=original)
            first = await cs.call("copy", chunk=2, version=5, source=1, source_version=2)

            # A repeat keeps the replica it finds, and what was written to it
            # since; it needs no source, which may be gone by then.
            await cs.call("write", chunk=2, version=5, offset=0, data=b"written since")
            await cs.call("delete", chunk=1)
            again = await cs.call("copy", chunk=2, version=5, source=1, source_version=2)
            assert again == first == {"length": len(original), "version": 5}
            got = await read_all(cs, 2, 5, len(original))
            assert got == b"written since" + original[13:]

            # An older replica is replaced by the copy.
            await cs.call("create", chunk=1, version=2)
            await cs.call("write", chunk=1, version=2, offset=0, data=original)
            await cs.call("create", chunk=3, version=1)
            await cs.call("write", chunk=3, version=1, offset=0, data=b"old" * BLOCK)
            reply = await cs.call("copy", chunk=3, version=2, source=1, source_version=2)
            assert reply == {"length": len(original), "version": 2}
            assert await read_all(cs, 3, 2, 3 * BLOCK) == original + bytes(BLOCK - 7)

            # So is one at the version that failed its checksums.
            flip_byte(data_dir, 3, BLOCK + 9)
            await expect_errno(errno.EIO, cs.call("read", chunk=3, version=2, offset=BLOCK,
                                                  length=BLOCK))
            await expect_errno(errno.EIO, cs.call("chunk_info", chunk=3))
            reply = await cs.call("copy", chunk=3, version=2, source=1, source_version=2)
            assert reply == {"length": len(original), "version": 2}
            assert await read_all(cs, 3, 2, len(original)) == original
            assert leftovers(data_dir) == []

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_copy_refuses_stale_missing_and_bad_arguments(tmp_path):
    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=1, version=3)
            await cs.call("write", chunk=1, version=3, offset=0, data=b"source")
            await cs.call("create", chunk=5, version=7)
            await cs.call("write", chunk=5, version=7, offset=0, data=b"newer")

            error = await expect_errno(errno.ESTALE, cs.call(
                "copy", chunk=2, version=1, source=1, source_version=2))
            assert "version 3" in error.message
            await expect_errno(errno.ESTALE, cs.call("copy", chunk=5, version=6, source=1,
                                                     source_version=3))
            assert await cs.call("chunk_info", chunk=5) == {"length": 5, "version": 7}
            got = await cs.call("read", chunk=5, version=7, offset=0, length=5)
            assert got["data"] == b"newer"
            await expect_errno(errno.ENOENT, cs.call("copy", chunk=2, version=1, source=9,
                                                     source_version=1))

            for args in ({"chunk": 1, "source": 1},
                         {"chunk": -1},
                         {"version": -1},
                         {"source": -2},
                         {"source_version": -3},
                         {"length": -1},
                         {"length": MAX_CHUNK + 1}):
                call = {"chunk": 2, "version": 1, "source": 1, "source_version": 3, **args}
                await expect_errno(errno.EINVAL, cs.call("copy", **call))
            await expect_errno(errno.ENOENT, cs.call("chunk_info", chunk=2))
            assert sorted(map(tuple, (await cs.call("list_chunks"))["chunks"])) == [
                (1, 3), (5, 7)]
            assert leftovers(c.servers[0].data_dir) == []

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_corrupt_source_fails_the_copy_and_is_reported(tmp_path):
    data = random.Random(6).randbytes(3 * BLOCK)

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=1, version=4)
            await cs.call("write", chunk=1, version=4, offset=0, data=data)
            flip_byte(c.servers[0].data_dir, 1, BLOCK + 1000)

            error = await expect_errno(errno.EIO, cs.call("copy", chunk=2, version=1,
                                                          source=1, source_version=4))
            assert "checksum" in error.message
            await expect_errno(errno.ENOENT, cs.call("chunk_info", chunk=2))
            assert [1, 4] in (await cs.call("list_chunks"))["chunks"]
            assert [2, 1] not in (await cs.call("list_chunks"))["chunks"]
            assert leftovers(c.servers[0].data_dir) == []
            await eventually(lambda: (1, 4) in c.meta.bad, what="cs_bad_chunk report")

            # Only the blocks copied are read: those before the bad one copy.
            reply = await cs.call("copy", chunk=3, version=1, source=1, source_version=4,
                                  length=BLOCK)
            assert reply == {"length": BLOCK, "version": 1}
            assert await read_all(cs, 3, 1, BLOCK) == data[:BLOCK]

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_copy_is_one_point_in_time_of_its_source(tmp_path):
    """Writes to the source while copies of it run: each write of two equal
    bytes straddles two of a copy's reads, so a copy that let a write in
    between them would hold two different bytes there."""
    size, at = 2 * MAX_DATA, MAX_DATA - 1

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=1, version=1)
            await cs.call("write", chunk=1, version=1, offset=size - 1, data=b"\0")
            copies = range(10, 30)

            async def writer():
                value = 0
                while True:
                    value = value % 255 + 1
                    await cs.call("write", chunk=1, version=1, offset=at,
                                  data=bytes([value]) * 2)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                for chunk in copies:
                    await cs.call("copy", chunk=chunk, version=1, source=1, source_version=1)
                nursery.cancel_scope.cancel()
            seen = set()
            for chunk in copies:
                got = await cs.call("read", chunk=chunk, version=1, offset=at, length=2)
                assert got["data"][0] == got["data"][1], f"copy {chunk} is torn"
                seen.add(got["data"])
            assert len(seen) > 1, "no copy ran alongside a write"

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_copy_survives_a_restart(tmp_path):
    data = random.Random(8).randbytes(BLOCK + 99)

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=1, version=1)
            await cs.call("write", chunk=1, version=1, offset=0, data=data)
            await cs.call("copy", chunk=2, version=6, source=1, source_version=1)
            server = c.servers[0]
            assert server.stop() == 0
            server.start()
            await server.wait_ready()
            await cs.aclose()
            cs = c.client()
            assert sorted(map(tuple, (await cs.call("list_chunks"))["chunks"])) == [
                (1, 1), (2, 6)]
            assert await cs.call("chunk_info", chunk=2) == {"length": len(data),
                                                            "version": 6}
            assert await read_all(cs, 2, 6, len(data)) == data
            await eventually(lambda: c.meta.registrations
                             and c.meta.registrations[-1]["chunks"] == [(1, 1), (2, 6)],
                             what="re-registration with the copy")

    trio.run(scenario)
