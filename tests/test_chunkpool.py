"""Empty chunks made ahead (metaserver/chunkpool.py), against a real
metaserver and real chunk servers: new files take them, fsck leaves them
alone, and a spare that lost a replica is never handed out."""

import signal

import pytest
import trio

from faults import replica_paths
from metaserver.chunkpool import SPARES
from test_metaserver_chunks import Replicas, count_alive, run_with_replicas, wait_until
from test_metaserver_support import ROOT, make_file, meta_factory, new_session
from test_metrics import free_port, scrape

pytestmark = pytest.mark.timeout(120)
__all__ = ["meta_factory"]


class Pooled:
    """A metaserver with metrics and `servers` chunk servers, and a session."""

    def __init__(self, meta_factory, servers: int):
        self.port = free_port()
        self.meta = meta_factory(replicas=2, heartbeat_timeout=1.5,
                                 metrics_listen=f"127.0.0.1:{self.port}")
        self.addrs = [self.meta.start_chunkserver(f"cs{i}") for i in range(servers)]
        self.files = 0

    def metric(self, name: str) -> float:
        return scrape(self.port)[name]

    async def stocked(self, count: int = SPARES) -> None:
        await wait_until(lambda: self._spares_are(count))

    async def _spares_are(self, count: int) -> bool:
        return await trio.to_thread.run_sync(self.metric, "dfs_meta_spare_chunks") == count

    async def started(self, c, replicas: Replicas) -> int:
        """Once every server is up: a session, whose first new chunk has the
        pool stocked."""
        await wait_until(lambda: count_alive(c, len(self.addrs)))
        session = await new_session(c)
        await self.new_chunk(c, session, replicas, b"first")
        await self.stocked()
        return session

    async def new_chunk(self, c, session: int, replicas: Replicas, data: bytes) -> dict:
        """A new file's first chunk, written and synced on every replica."""
        self.files += 1
        f = await make_file(c, ROOT, b"f%d" % self.files, session=session)
        grant = await c.call("chunk_write", ino=f["ino"], index=0, session=session)
        await replicas.write(grant, data)
        return grant


async def held(replicas: Replicas, addr: str) -> set[int]:
    reply = await replicas.pool.get(addr).call("list_chunks")
    return {chunk for chunk, _ in reply["chunks"]}


def test_new_files_take_chunks_made_ahead(meta_factory):
    pooled = Pooled(meta_factory, servers=3)

    async def body(c, replicas: Replicas):
        await wait_until(lambda: count_alive(c, 3))
        s = await new_session(c)
        # The first new chunk is made while its writer waits, and has the
        # pool stocked for its replica count.
        first = await pooled.new_chunk(c, s, replicas, b"first")
        await pooled.stocked()
        assert pooled.metric("dfs_meta_spare_chunks_taken_total") == 0
        on_disk = set().union(*[await held(replicas, a) for a in pooled.addrs])
        spares = on_disk - {first["chunk"]}
        assert len(spares) == SPARES

        # fsck knows the spares for what they are: no orphans.
        report = await c.call("fsck_servers", repair=True)
        assert report["problems"] == []

        grants = [await pooled.new_chunk(c, s, replicas, b"data %d" % i) for i in range(3)]
        assert pooled.metric("dfs_meta_spare_chunks_taken_total") == 3
        for i, grant in enumerate(grants):
            assert grant["chunk"] in spares and grant["version"] == 1
            assert len(grant["servers"]) == 2
            expected = b"data %d" % i
            for _, addr in grant["servers"]:
                assert await replicas.read(addr, grant["chunk"], 1, len(expected)) == expected
        # The pool makes up for what was taken.
        await pooled.stocked()
        assert (await c.call("status"))["chunks"] == 4

        # A server that restarts with its spares keeps them: registration
        # does not take them for replicas the table has forgotten.
        meta = pooled.meta
        before = await held(replicas, pooled.addrs[2])
        meta.chunkservers[2].send_signal(signal.SIGTERM)
        meta.chunkservers[2].wait()
        pooled.addrs[2] = meta.start_chunkserver("cs2")
        await wait_until(lambda: count_alive(c, 3))
        await trio.sleep(1.0)   # heartbeats that would hand out deletions
        assert await held(replicas, pooled.addrs[2]) == before
        assert pooled.metric("dfs_meta_spare_chunks_dropped_total") == 0

    run_with_replicas(pooled.meta, body)


def test_a_spare_that_lost_a_replica_is_dropped_not_handed_out(meta_factory):
    pooled = Pooled(meta_factory, servers=3)
    meta = pooled.meta

    async def body(c, replicas: Replicas):
        s = await pooled.started(c, replicas)
        ino = (await c.call("lookup", parent=ROOT, name=b"f1"))["ino"]
        mapped = (await c.call("chunk_read", ino=ino, index=0))["chunk"]
        cs0, cs1 = meta.chunkservers[:2]

        # cs0 comes back without the spares it held (a disk swapped under it).
        lost = await held(replicas, pooled.addrs[0]) - {mapped}
        assert lost
        cs0.send_signal(signal.SIGTERM)
        cs0.wait()
        for chunk in lost:
            for path in replica_paths(meta.base / "cs0", chunk):
                path.unlink()
        pooled.addrs[0] = meta.start_chunkserver("cs0")
        await wait_until(lambda: count_alive(c, 3))
        await wait_until(lambda: trio.to_thread.run_sync(
            pooled.metric, "dfs_meta_spare_chunks_dropped_total"))
        assert pooled.metric("dfs_meta_spare_chunks_dropped_total") == len(lost)

        # cs1 dies: its spares are dropped as they come up, never handed out.
        cs1.send_signal(signal.SIGKILL)
        cs1.wait()
        await wait_until(lambda: count_alive(c, 2))
        dead = pooled.addrs[1]
        for i in range(SPARES + 2):
            grant = await pooled.new_chunk(c, s, replicas, b"data %d" % i)
            assert dead not in [addr for _, addr in grant["servers"]]
            assert len(grant["servers"]) == 2
            for chunk in lost:
                assert grant["chunk"] != chunk
        assert pooled.metric("dfs_meta_spare_chunks_dropped_total") > len(lost)

        # The replicas of the dropped spares are deleted where they were kept.
        survivors = [a for a in pooled.addrs if a != dead]

        async def only_the_table_and_spares() -> bool:
            table = set()
            for i in range(pooled.files):
                ino = (await c.call("lookup", parent=ROOT, name=b"f%d" % (i + 1)))["ino"]
                table.add((await c.call("chunk_read", ino=ino, index=0))["chunk"])
            on_disk = set().union(*[await held(replicas, a) for a in survivors])
            spares = pooled.metric("dfs_meta_spare_chunks")
            return table <= on_disk and len(on_disk - table) == spares

        await wait_until(only_the_table_and_spares)

    run_with_replicas(meta, body)


def test_a_restarted_metaserver_deletes_the_spares_it_forgot(meta_factory):
    pooled = Pooled(meta_factory, servers=2)
    meta = pooled.meta

    async def body(c, replicas: Replicas):
        await pooled.started(c, replicas)
        assert len(await held(replicas, pooled.addrs[0])) == SPARES + 1

    run_with_replicas(meta, body)
    meta.restart()

    async def after(c, replicas: Replicas):
        await wait_until(lambda: count_alive(c, 2))
        ino = (await c.call("lookup", parent=ROOT, name=b"f1"))["ino"]
        chunk = (await c.call("chunk_read", ino=ino, index=0))["chunk"]
        for addr in pooled.addrs:
            await wait_until(lambda a=addr: _only(replicas, a, chunk))
            assert await replicas.read(addr, chunk, 1, 5) == b"first"
        assert pooled.metric("dfs_meta_spare_chunks") == 0

    run_with_replicas(meta, after)


async def _only(replicas: Replicas, addr: str, chunk: int) -> bool:
    return await held(replicas, addr) == {chunk}
