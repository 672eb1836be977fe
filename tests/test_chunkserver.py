"""The chunk server as a real process, driven over the real protocol, with a
stand-in metaserver (see test_chunkserver_support) to watch the link."""

import errno
import os
import random
import socket
import struct
import subprocess

import pytest
import trio

from chunkserver.chunkfile import BLOCK, MAX_CHUNK
from chunkserver.chunkstore import ChunkStore
from dfs import ops
from dfs.errors import DfsError
from dfs.framing import MAX_DATA, REPLY, REQUEST
from dfs.rpc import parse_addr
from test_chunkserver_support import (BIN, SECRET, MiB, StandInMeta, apply, closed_by_server,
                                      cluster, eventually, expect_errno, flip_byte,
                                      raw_connection, read_all, running)
from test_chunkserver_support import reap_processes  # noqa: F401 (an autouse fixture)
from test_metrics import free_port, scrape

# --- data operations -----------------------------------------------------------

@pytest.mark.timeout(60)
def test_writes_and_reads_at_unaligned_offsets(tmp_path):
    rng = random.Random(7)

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=1, version=1)
            model = bytearray()
            writes = [(0, 10), (1000, 5000), (BLOCK - 6, 20), (100_000, 200_000),
                      (3 * BLOCK, BLOCK), (MiB, MiB), (2 * MiB + 123, MAX_DATA)]
            writes += [(rng.randrange(0, 2 * MiB), 4096) for _ in range(40)]
            for offset, size in writes:
                data = rng.randbytes(size)
                await cs.call("write", chunk=1, version=1, offset=offset, data=data)
                apply(model, offset, data)
            info = await cs.call("chunk_info", chunk=1)
            assert info == {"length": len(model), "version": 1}
            assert await read_all(cs, 1, 1, len(model)) == bytes(model)
            for _ in range(40):
                offset, size = rng.randrange(0, len(model) + BLOCK), rng.randrange(0, 300_000)
                reply = await cs.call("read", chunk=1, version=1, offset=offset, length=size)
                expected = bytes(model[offset:offset + size])
                assert reply["data"] == expected + bytes(size - len(expected))

            # A write far past the end leaves a hole that reads as zeros.
            await cs.call("write", chunk=1, version=1, offset=40 * MiB + 5, data=b"tail")
            apply(model, 40 * MiB + 5, b"tail")
            hole = await cs.call("read", chunk=1, version=1, offset=20 * MiB, length=MAX_DATA)
            assert hole["data"] == bytes(MAX_DATA)
            reply = await cs.call("read", chunk=1, version=1, offset=40 * MiB, length=BLOCK)
            assert reply["data"] == bytes(5) + b"tail" + bytes(BLOCK - 9)
            await cs.call("sync", chunk=1, version=1)
            assert (await cs.call("chunk_info", chunk=1))["length"] == len(model)
            data_path, _ = ChunkStore(c.servers[0].data_dir).paths(1)
            assert os.stat(data_path).st_blocks * 512 < 16 * MiB, "the hole was filled"

            # Reads past the sanity limit return what there is, never fail.
            reply = await cs.call("read", chunk=1, version=1, offset=(1 << 30) - 10,
                                  length=100)
            assert reply["data"] == bytes(10)

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_concurrent_small_writes_sharing_blocks(tmp_path):
    """Many 4 KiB writes in flight at once, several per 64 KiB block: each
    read-modify-write of a block's CRC must see the others' data."""
    pieces = [(i * 4096, bytes([i % 251 + 1]) * 4096) for i in range(96)]
    random.Random(17).shuffle(pieces)

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=5, version=1)
            async with trio.open_nursery() as nursery:
                for offset, data in pieces:
                    nursery.start_soon(lambda o=offset, d=data: cs.call(
                        "write", chunk=5, version=1, offset=o + 100, data=d))
            expected = bytearray(100)
            for offset, data in sorted(pieces):
                expected += data
            assert await read_all(cs, 5, 1, len(expected)) == bytes(expected)

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_reads_and_syncs_share_a_chunk_but_never_see_a_write_half_done(tmp_path):
    """Readers, syncs and a writer on one chunk at once. Each write fills a
    whole region with one byte value, so a read of the region that overlapped
    a write would come back mixed, or fail its CRCs."""
    region, regions, rounds = MAX_DATA, 2, 8

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=9, version=1)
            for r in range(regions):
                await cs.call("write", chunk=9, version=1, offset=r * region,
                              data=bytes([1]) * region)
            seen: list[set[int]] = []

            async def writer():
                for value in range(2, rounds + 2):
                    for r in range(regions):
                        await cs.call("write", chunk=9, version=1, offset=r * region,
                                      data=bytes([value]) * region)

            async def reader(r: int):
                for _ in range(rounds * 2):
                    reply = await cs.call("read", chunk=9, version=1, offset=r * region,
                                          length=region)
                    seen.append(set(reply["data"]))

            async def syncer():
                for _ in range(rounds):
                    await cs.call("sync", chunk=9, version=1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                nursery.start_soon(syncer)
                for r in range(regions):
                    nursery.start_soon(reader, r)
                    nursery.start_soon(reader, r)
            assert len(seen) == regions * 2 * rounds * 2
            mixed = [values for values in seen if len(values) != 1]
            assert not mixed, f"{len(mixed)} reads saw a write half done"
            assert len({value for values in seen for value in values}) > 2, \
                "the reads never overlapped the writes"
            final = await read_all(cs, 9, 1, regions * region)
            assert final == bytes([rounds + 1]) * (regions * region)

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_reads_that_find_a_replica_closed_together_open_it_once(tmp_path):
    """After a restart no replica is open. Reads that arrive together all
    find it closed and open it side by side: one handle is kept, the others
    are closed again, so no file descriptor leaks."""
    data = random.Random(51).randbytes(8 * MiB)

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=51, version=1)
            for offset in range(0, len(data), MAX_DATA):
                await cs.call("write", chunk=51, version=1, offset=offset,
                              data=data[offset:offset + MAX_DATA])
            server = c.servers[0]
            server.stop()
            server.start()
            await server.wait_ready()
            await cs.aclose()
            cs = c.client()
            await cs.call("list_chunks")   # connected, and nothing opened
            fds = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
            got = {}

            async def read(offset):
                reply = await cs.call("read", chunk=51, version=1, offset=offset, length=MiB)
                got[offset] = reply["data"]

            async with trio.open_nursery() as nursery:
                for offset in range(0, len(data), MiB):
                    nursery.start_soon(read, offset)
            assert b"".join(got[offset] for offset in sorted(got)) == data
            # The replica's data and metadata files, once.
            assert len(os.listdir(f"/proc/{server.proc.pid}/fd")) == fds + 2

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_write_extents_apply_in_order_and_sync(tmp_path):
    """Scattered pieces in one request land as if written one by one, in
    order (a later piece wins where two overlap); a bad request changes nothing."""
    rng = random.Random(23)
    extents = [[rng.randrange(0, 3 * MiB), rng.randbytes(rng.choice((1, 512, 4096, 70_000)))]
               for _ in range(200)]
    extents += [[1000, b"a" * 100], [1050, b"b" * 100]]

    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            await cs.call("create", chunk=31, version=1)
            await cs.call("write", chunk=31, version=1, offset=0, data=b"base" * 1000,
                          sync=True)
            model = bytearray(b"base" * 1000)
            await cs.call("write_extents", chunk=31, version=1, extents=extents, sync=True)
            for offset, data in extents:
                apply(model, offset, data)
            assert await read_all(cs, 31, 1, len(model)) == bytes(model)
            assert model[1000:1150] == b"a" * 50 + b"b" * 100

            for bad, code in [([[0, b"x"]] * (ops.MAX_EXTENTS + 1), errno.EINVAL),
                              ([[0, b"x"], [5]], errno.EINVAL),
                              ([[0, b"x"], ["0", b"x"]], errno.EINVAL),
                              ([[0, b"x"], [True, b"x"]], errno.EINVAL),
                              ([[0, b"x"], [-1, b"x"]], errno.EINVAL),
                              ([[0, b"x"], [MAX_CHUNK - 1, b"xy"]], errno.EFBIG),
                              ([[0, bytes(MAX_DATA // 2)], [0, bytes(MAX_DATA // 2 + 1)]],
                               errno.EINVAL)]:
                error = await expect_errno(code, cs.call("write_extents", chunk=31, version=1,
                                                         extents=bad))
                assert "chunk 31" in str(error)
            await expect_errno(errno.ESTALE, cs.call("write_extents", chunk=31, version=2,
                                                     extents=[[0, b"old"], [9, b"old"]]))
            assert await read_all(cs, 31, 1, len(model)) == bytes(model)

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_versions_guard_every_access(tmp_path):
    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            for op, args in [("read", {"version": 1, "offset": 0, "length": 1}),
                             ("write", {"version": 1, "offset": 0, "data": b"x"}),
                             ("sync", {"version": 1}),
                             ("truncate", {"version": 1, "length": 0}),
                             ("set_version", {"old": 1, "new": 2}),
                             ("chunk_info", {})]:
                await expect_errno(errno.ENOENT, cs.call(op, chunk=9, **args))

            await cs.call("create", chunk=9, version=3)
            await cs.call("write", chunk=9, version=3, offset=0, data=b"version three")
            await expect_errno(errno.ESTALE, cs.call("write", chunk=9, version=2, offset=0,
                                                     data=b"old writer"))
            await expect_errno(errno.ESTALE, cs.call("read", chunk=9, version=4, offset=0,
                                                     length=5))
            await expect_errno(errno.ESTALE, cs.call("sync", chunk=9, version=2))
            await expect_errno(errno.ESTALE, cs.call("set_version", chunk=9, old=2, new=4))
            await cs.call("set_version", chunk=9, old=3, new=4)
            await cs.call("set_version", chunk=9, old=3, new=4)
            reply = await cs.call("read", chunk=9, version=4, offset=0, length=13)
            assert reply["data"] == b"version three"

            # create never lowers a version; it raises one and keeps the data.
            await expect_errno(errno.ESTALE, cs.call("create", chunk=9, version=2))
            await cs.call("create", chunk=9, version=6)
            await cs.call("create", chunk=9, version=6)
            assert await cs.call("chunk_info", chunk=9) == {"length": 13, "version": 6}
            reply = await cs.call("read", chunk=9, version=6, offset=8, length=5)
            assert reply["data"] == b"three"

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_truncate_and_delete(tmp_path):
    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            data = random.Random(3).randbytes(300_000)
            await cs.call("create", chunk=4, version=1)
            await cs.call("write", chunk=4, version=1, offset=0, data=data)

            await cs.call("truncate", chunk=4, version=1, length=100_001)
            assert (await cs.call("chunk_info", chunk=4))["length"] == 100_001
            got = await read_all(cs, 4, 1, 300_000)
            assert got == data[:100_001] + bytes(300_000 - 100_001)

            await cs.call("truncate", chunk=4, version=1, length=500_000)
            await cs.call("write", chunk=4, version=1, offset=450_000, data=b"after")
            got = await read_all(cs, 4, 1, 500_000)
            assert got == (data[:100_001] + bytes(450_000 - 100_001) + b"after"
                           + bytes(500_000 - 450_005))
            await cs.call("truncate", chunk=4, version=1, length=0)
            assert await read_all(cs, 4, 1, 200_000) == bytes(200_000)

            await cs.call("delete", chunk=4)
            await cs.call("delete", chunk=4)
            await expect_errno(errno.ENOENT, cs.call("read", chunk=4, version=1, offset=0,
                                                     length=1))
            await cs.call("create", chunk=4, version=1)
            assert await cs.call("chunk_info", chunk=4) == {"length": 0, "version": 1}
            assert (await cs.call("read", chunk=4, version=1, offset=0,
                                  length=10))["data"] == bytes(10)

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_restart_keeps_replicas(tmp_path):
    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            data = random.Random(5).randbytes(MiB + 77)
            await cs.call("create", chunk=11, version=2)
            await cs.call("write", chunk=11, version=2, offset=3, data=data)
            await cs.call("set_version", chunk=11, old=2, new=3)
            await cs.call("sync", chunk=11, version=3)
            server = c.servers[0]
            await eventually(lambda: c.meta.registrations, what="registration")
            csid = c.meta.csid_of(server.addr)
            assert server.stop() == 0
            server.start()
            await server.wait_ready()
            await cs.aclose()
            cs = c.client()
            assert await read_all(cs, 11, 3, MiB + 80) == bytes(3) + data
            await eventually(lambda: len(c.meta.registrations) == 2, what="re-registration")
            again = c.meta.registrations[-1]
            assert again["chunks"] == [(11, 3)]
            assert again["csid"] == csid

            # Killed without warning after unsynced writes: what is there verifies.
            await cs.call("write", chunk=11, version=3, offset=5000, data=b"unsynced")
            server.proc.kill()
            server.proc.wait()
            server.start()
            await server.wait_ready()
            await cs.aclose()
            cs = c.client()
            got = await read_all(cs, 11, 3, MiB + 80)
            assert got == bytes(3) + data[:4997] + b"unsynced" + data[5005:]

    trio.run(scenario)


# --- checksums -----------------------------------------------------------------

@pytest.mark.timeout(60)
def test_corrupt_block_fails_reads_and_is_reported(tmp_path):
    async def scenario():
        async with cluster(tmp_path) as c:
            cs = c.client()
            data = random.Random(9).randbytes(3 * BLOCK)
            await cs.call("create", chunk=21, version=5)
            await cs.call("write", chunk=21, version=5, offset=0, data=data)
            await cs.call("create", chunk=22, version=1)
            await cs.call("write", chunk=22, version=1, offset=0, data=b"healthy")
            flip_byte(c.servers[0].data_dir, 21, BLOCK + 1000)

            reply = await cs.call("read", chunk=21, version=5, offset=0, length=BLOCK)
            assert reply["data"] == data[:BLOCK]
            error = await expect_errno(errno.EIO, cs.call("read", chunk=21, version=5,
                                                          offset=BLOCK + 10, length=10))
            assert "checksum" in error.message
            # A partial write into the bad block lands but does not bless it:
            # the block still fails its reads.
            await cs.call("write", chunk=21, version=5, offset=BLOCK + 5, data=b"patch")
            await expect_errno(errno.EIO, cs.call("read", chunk=21, version=5, offset=0,
                                                  length=3 * BLOCK))
            # A whole-block overwrite replaces the bad data and verifies again.
            await cs.call("write", chunk=21, version=5, offset=BLOCK, data=bytes(BLOCK))
            reply = await cs.call("read", chunk=21, version=5, offset=0, length=3 * BLOCK)
            assert reply["data"] == data[:BLOCK] + bytes(BLOCK) + data[2 * BLOCK:]

            await eventually(lambda: (21, 5) in c.meta.bad, what="cs_bad_chunk report")
            assert c.meta.bad.count((21, 5)) == 1
            assert "chunk=21" in c.servers[0].log()
            reply = await cs.call("read", chunk=22, version=1, offset=0, length=7)
            assert reply["data"] == b"healthy"

    trio.run(scenario)


@pytest.mark.timeout(60)
def test_scrubber_finds_corruption_nobody_reads(tmp_path):
    async def scenario():
        async with cluster(tmp_path, scrub_rate=64, flags=("--scrub-every", "0")) as c:
            cs = c.client()
            await cs.call("create", chunk=31, version=2)
            await cs.call("write", chunk=31, version=2, offset=0, data=b"\x55" * 3 * MiB)
            await cs.call("create", chunk=32, version=1)
            await cs.call("write", chunk=32, version=1, offset=0, data=b"fine" * 1000)
            flip_byte(c.servers[0].data_dir, 31, 2 * MiB + 17)
            await eventually(lambda: (31, 2) in c.meta.bad, timeout=15,
                             what="the scrubber's report")
            assert (32, 1) not in c.meta.bad
            assert "scrub found a bad replica" in c.servers[0].log()

    trio.run(scenario)


async def small_replicas(cs, chunks) -> None:
    for chunk in chunks:
        await cs.call("create", chunk=chunk, version=1)
        await cs.call("write", chunk=chunk, version=1, offset=0, data=b"small")


async def scrubbed(port: int) -> float:
    """Replicas the chunk server with metrics on `port` has scrubbed."""
    samples = await trio.to_thread.run_sync(scrape, port)
    return samples["dfs_chunkserver_scrubbed_replicas_total"]


@pytest.mark.timeout(60)
def test_scrubber_reads_each_replica_once_per_period_at_its_rate(tmp_path):
    port = free_port()

    async def scenario():
        # 4 MiB/s with each small replica counted as 256 KiB: 16 replicas a second.
        async with cluster(tmp_path, scrub_rate=4,
                           flags=("--metrics-listen", f"127.0.0.1:{port}")) as c:
            cs = c.client()
            await small_replicas(cs, range(100, 140))
            with trio.fail_after(20):
                while await scrubbed(port) == 0:
                    await trio.sleep(0.05)
            await trio.sleep(1)
            assert await scrubbed(port) <= 16 + 2
            with trio.fail_after(20):
                while await scrubbed(port) < 40:
                    await trio.sleep(0.2)
            # Each read once: the next pass is a day away.
            await trio.sleep(2.5)
            assert await scrubbed(port) == 40
            # A replica made since is read at its first look.
            await cs.call("create", chunk=140, version=1)
            await cs.call("write", chunk=140, version=1, offset=0, data=b"late")
            with trio.fail_after(10):
                while await scrubbed(port) < 41:
                    await trio.sleep(0.2)
            await trio.sleep(2.5)
            assert await scrubbed(port) == 41
            assert c.meta.bad == []

    trio.run(scenario)


@pytest.mark.timeout(90)
def test_a_restarted_scrubber_goes_on_where_it_was(tmp_path):
    port = free_port()

    async def scrubbed_reaches(n: int) -> None:
        with trio.fail_after(20):
            while await scrubbed(port) < n:
                await trio.sleep(0.1)

    async def scenario():
        async with cluster(tmp_path, scrub_rate=64,
                           flags=("--metrics-listen", f"127.0.0.1:{port}")) as c:
            await small_replicas(c.client(), range(100, 120))
            await scrubbed_reaches(20)
            server = c.servers[0]
            record = server.data_dir / "scrub.state"

            # Verified a moment ago, before a clean stop: not read again.
            server.stop()
            assert record.exists()
            server.start()
            await server.wait_ready()
            await c.client().call("create", chunk=120, version=1)
            await scrubbed_reaches(1)
            await trio.sleep(2.5)
            assert await scrubbed(port) == 1

            # A record that cannot be read is set aside: everything is read again.
            server.stop()
            record.write_bytes(b"\xc1 not msgpack")
            server.start()
            await server.wait_ready()
            await scrubbed_reaches(21)
            assert "ignoring an unreadable scrubber record" in server.log()

    trio.run(scenario)


# --- replication -----------------------------------------------------------------

@pytest.mark.timeout(90)
def test_replicate_between_servers(tmp_path):
    async def scenario():
        async with cluster(tmp_path, servers=2) as c:
            a, b = c.client(0), c.client(1)
            rng = random.Random(11)
            head, tail = rng.randbytes(MiB + 3), rng.randbytes(70_000)
            await a.call("create", chunk=7, version=2)
            await a.call("write", chunk=7, version=2, offset=0, data=head)
            await a.call("write", chunk=7, version=2, offset=9 * MiB + 1, data=tail)
            length = 9 * MiB + 1 + len(tail)

            reply = await b.call("replicate", chunk=7, version=2, source=c.servers[0].addr)
            assert reply == {"length": length, "version": 2}
            assert await b.call("chunk_info", chunk=7) == {"length": length, "version": 2}
            assert await read_all(b, 7, 2, length) == await read_all(a, 7, 2, length)
            data_path, _ = ChunkStore(c.servers[1].data_dir).paths(7)
            assert os.stat(data_path).st_blocks * 512 < 4 * MiB, "holes were not kept"
            # Idempotent at the same version; refused when the source disagrees.
            await b.call("replicate", chunk=7, version=2, source=c.servers[0].addr)
            await expect_errno(errno.ESTALE, b.call("replicate", chunk=7, version=1,
                                                    source=c.servers[0].addr))
            await b.call("delete", chunk=7)
            await expect_errno(errno.ESTALE, b.call("replicate", chunk=7, version=3,
                                                    source=c.servers[0].addr))

            # A corrupt source yields EIO and no replica, not a copy of bad data.
            await a.call("create", chunk=8, version=1)
            await a.call("write", chunk=8, version=1, offset=0, data=rng.randbytes(BLOCK * 2))
            flip_byte(c.servers[0].data_dir, 8, 5)
            await expect_errno(errno.EIO, b.call("replicate", chunk=8, version=1,
                                                 source=c.servers[0].addr))
            await expect_errno(errno.ENOENT, b.call("chunk_info", chunk=8))
            await expect_errno(errno.EINVAL, b.call("replicate", chunk=8, version=1,
                                                    source="no-port"))
            leftovers = [p.name for p in c.servers[1].data_dir.rglob("*.tmp")]
            assert leftovers == []

    trio.run(scenario)


# --- the metaserver link ---------------------------------------------------------

@pytest.mark.timeout(90)
def test_metaserver_link(tmp_path):
    async def scenario():
        async with cluster(tmp_path, servers=2) as c:
            meta = c.meta
            await eventually(lambda: len(meta.registrations) == 2, what="registrations")
            first = meta.registrations[0]
            assert first["csid"] is None and first["chunks"] == []
            assert first["capacity"] > first["used"] > 0
            a_addr, b_addr = c.servers[0].addr, c.servers[1].addr
            a_id, b_id = meta.csid_of(a_addr), meta.csid_of(b_addr)
            await eventually(lambda: meta.heartbeats.get(a_id, 0) >= 2, what="heartbeats")

            a, b = c.client(0), c.client(1)
            for chunk in (1, 2, 3):
                await a.call("create", chunk=chunk, version=1)
                await a.call("write", chunk=chunk, version=1, offset=0, data=b"c%d" % chunk)
            meta.deletes[a_id] = [2]
            meta.copies[b_id] = [[3, 1, a_addr], [4, 1, a_addr]]

            async def state(client, chunk):
                try:
                    return (await client.call("chunk_info", chunk=chunk))["version"]
                except DfsError as exc:
                    return exc.errno

            with trio.fail_after(10):
                while await state(a, 2) != errno.ENOENT or await state(b, 3) != 1:
                    await trio.sleep(0.05)
            assert (await b.call("read", chunk=3, version=1, offset=0, length=2))["data"] == b"c3"
            await eventually(lambda: "replication failed" in c.servers[1].log(),
                             what="the failed copy of a missing chunk to be logged")

            # Clients are served while the metaserver is away; a metaserver that
            # forgot everything gets a full registration again.
            port = parse_addr(c.servers[0].meta)[1]
            meta.stop()
            await trio.sleep(0.5)
            assert (await a.call("read", chunk=1, version=1, offset=0,
                                 length=2))["data"] == b"c1"
            fresh = StandInMeta()
            fresh.on_register_delete = [1]
            async with trio.open_nursery() as nursery:
                await fresh.start(nursery, port)
                await eventually(lambda: len(fresh.registrations) == 2, what="re-registration")
                by_addr = {r["addr"]: r for r in fresh.registrations}
                assert by_addr[a_addr]["csid"] == a_id
                assert by_addr[a_addr]["chunks"] == [(1, 1), (3, 1)]
                assert by_addr[b_addr]["chunks"] == [(3, 1)]
                with trio.fail_after(10):
                    while await state(a, 1) != errno.ENOENT:
                        await trio.sleep(0.05)
                assert (await a.call("read", chunk=3, version=1, offset=0,
                                     length=2))["data"] == b"c3"
                fresh.stop()

    trio.run(scenario)


# --- a full disk -------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)],
                   check=True)
    try:
        yield mountpoint
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if subprocess.run(["umount", str(mountpoint)]).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)])


@pytest.mark.timeout(60)
def test_full_disk_gives_enospc_and_keeps_data(tmp_path, small_disk):
    async def scenario():
        async with cluster(tmp_path, data_dirs=[small_disk / "cs"]) as c:
            cs = c.client()
            first = random.Random(13).randbytes(2 * MiB)
            await cs.call("create", chunk=1, version=1)
            await cs.call("write", chunk=1, version=1, offset=0, data=first)
            await cs.call("sync", chunk=1, version=1)

            await cs.call("create", chunk=2, version=1)
            written = 0
            with pytest.raises(DfsError) as info:
                for _ in range(8):
                    await cs.call("write", chunk=2, version=1, offset=written,
                                  data=b"\xab" * MAX_DATA)
                    written += MAX_DATA
            assert info.value.errno == errno.ENOSPC, str(info.value)
            assert written >= MAX_DATA
            assert await cs.call("chunk_info", chunk=2) == {"length": written, "version": 1}
            assert await read_all(cs, 1, 1, len(first)) == first
            assert await read_all(cs, 2, 1, written) == b"\xab" * written
            # A partial overwrite of existing data still works on a full disk.
            await cs.call("write", chunk=1, version=1, offset=100, data=b"still here")

            await cs.call("delete", chunk=2)
            await cs.call("write", chunk=1, version=1, offset=2 * MiB, data=b"\x01" * MiB)
            got = await read_all(cs, 1, 1, 3 * MiB)
            assert got == first[:100] + b"still here" + first[110:] + b"\x01" * MiB

    trio.run(scenario)


# --- bad input ---------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_bad_input_is_refused_while_others_are_served(tmp_path):
    async def scenario():
        async with cluster(tmp_path) as c:
            good = c.client()
            await good.call("create", chunk=1, version=1)
            await good.call("write", chunk=1, version=1, offset=0, data=b"steady" * 1000)
            served = []

            async def keep_reading(task_status=trio.TASK_STATUS_IGNORED):
                task_status.started()
                while True:
                    reply = await good.call("read", chunk=1, version=1, offset=0, length=6000)
                    assert reply["data"] == b"steady" * 1000
                    served.append(1)
                    await trio.sleep(0.01)

            addr = c.servers[0].addr
            async with trio.open_nursery() as nursery:
                await nursery.start(keep_reading)

                await expect_errno(errno.EACCES, c.client(secret=b"x" * 32).call(
                    "chunk_info", chunk=1))

                host, port = parse_addr(addr)
                garbage = await trio.open_tcp_stream(host, port)
                # Random bytes behind a length no frame may have: a random length
                # is a possible one once in a thousand runs, and the server then
                # rightly waits for the rest until the handshake times out.
                await garbage.send_all(struct.pack(">I", 0xFFFF0000) + os.urandom(2996))
                assert await closed_by_server(garbage)

                framed = await raw_connection(addr)
                await framed.stream.send_all(struct.pack(">I", 0x7FFFFFFF) + b"xx")
                assert await closed_by_server(framed.stream)

                framed = await raw_connection(addr)
                await framed.stream.send_all(struct.pack(">I", 1000) + b"only a little")
                await framed.aclose()

                framed = await raw_connection(addr)
                await framed.stream.send_all(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
                assert await closed_by_server(framed.stream)

                framed = await raw_connection(addr)
                requests = [
                    ("no_such_op", {}, errno.ENOSYS),
                    ("read", {"chunk": "1", "version": 1, "offset": 0, "length": 1},
                     errno.EINVAL),
                    ("read", {"chunk": 1, "version": 1, "offset": 0}, errno.EINVAL),
                    ("write", {"chunk": 1, "version": 1, "offset": 0, "data": "text"},
                     errno.EINVAL),
                    ("write", {"chunk": 1, "version": 1, "offset": 0, "data": b"",
                               "extra": 1}, errno.EINVAL),
                    ("read", {"chunk": 1, "version": 1, "offset": -1, "length": 1},
                     errno.EINVAL),
                    ("read", {"chunk": 1, "version": 1, "offset": 0,
                              "length": MAX_DATA + 1}, errno.EINVAL),
                    ("write", {"chunk": 1, "version": 1, "offset": 0,
                               "data": bytes(MAX_DATA + 1)}, errno.EINVAL),
                    ("write", {"chunk": 1, "version": 1, "offset": (1 << 30) - 1,
                               "data": b"ab"}, errno.EFBIG),
                    ("create", {"chunk": -5, "version": 1}, errno.EINVAL),
                    ("truncate", {"chunk": 1, "version": 1, "length": -1}, errno.EINVAL),
                ]
                for request_id, (op, args, code) in enumerate(requests, 1):
                    await framed.send([REQUEST, request_id, op, args])
                    reply = await framed.receive()
                    assert reply[:3] == [REPLY, request_id, code], (op, args, reply)
                    assert isinstance(reply[3], str) and reply[3]
                await framed.send([REQUEST, 99, "chunk_info", {"chunk": 1}])
                assert await framed.receive() == [REPLY, 99, 0, {"length": 6000, "version": 1}]
                await framed.aclose()

                framed = await raw_connection(addr)
                await framed.stream.send_all(struct.pack(">I", MAX_DATA + 128 * 1024))
                assert await closed_by_server(framed.stream)

                before = len(served)
                await eventually(lambda: len(served) > before + 3, what="reads to go on")
                nursery.cancel_scope.cancel()
            reply = await c.client().call("read", chunk=1, version=1, offset=0, length=6)
            assert reply["data"] == b"steady"

    trio.run(scenario)


# --- the command line ---------------------------------------------------------------

@pytest.mark.timeout(60)
def test_command_line(tmp_path):
    help_text = subprocess.run([str(BIN), "--help"], capture_output=True, text=True,
                               check=True).stdout
    for flag in ("--listen", "--meta", "--data-dir", "--secret-file", "--advertise",
                 "--heartbeat-interval", "--scrub-rate", "--scrub-every", "--ready-file",
                 "--log-level"):
        assert flag in help_text

    env = {k: v for k, v in os.environ.items() if not k.startswith("DFS_SECRET")}
    base = [str(BIN), "--listen", "127.0.0.1:0", "--meta", "127.0.0.1:1",
            "--data-dir", str(tmp_path / "d")]
    run = subprocess.run(base, capture_output=True, text=True, env=env, timeout=30)
    assert run.returncode == 2 and "secret" in run.stderr
    env["DFS_SECRET"] = SECRET.decode()
    run = subprocess.run([str(BIN), "--listen", "nowhere", "--meta", "127.0.0.1:1",
                          "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, env=env, timeout=30)
    assert run.returncode == 2 and "HOST:PORT" in run.stderr

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken:
        port = taken.getsockname()[1]
        run = subprocess.run(base[:2] + [f"127.0.0.1:{port}"] + base[3:], capture_output=True,
                             text=True, env=env, timeout=30)
    assert run.returncode == 1 and "in use" in run.stderr

    async def scenario():
        async with cluster(tmp_path) as c:
            again = subprocess.run(
                [str(BIN), "--listen", "127.0.0.1:0", "--meta", "127.0.0.1:1",
                 "--data-dir", str(c.servers[0].data_dir)],
                capture_output=True, text=True, env=env, timeout=30)
            assert again.returncode == 2 and "in use by another" in again.stderr

    trio.run(scenario)
