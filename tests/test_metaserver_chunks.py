"""The data path against real chunk servers: placement, leases, versions,
truncation, garbage collection, dead servers and re-replication."""

import errno
import os
import signal

import pytest
import trio

from dfs.errors import DfsError
from dfs.ops import CHUNK
from dfs.rpc import ClientPool
from test_metaserver_support import (CHUNK_SIZE, ROOT, error_of, make_file, meta_factory,
                                     new_session)

pytestmark = pytest.mark.timeout(120)
__all__ = ["meta_factory"]


async def wait_until(predicate, timeout: float = 20.0, step: float = 0.1):
    with trio.fail_after(timeout):
        while True:
            result = await predicate()
            if result:
                return result
            await trio.sleep(step)


async def alive_servers(c) -> list[dict]:
    return [s for s in (await c.call("status"))["chunkservers"] if s["alive"]]


class Replicas:
    """Talks to chunk servers directly, over connections kept for the whole test."""

    def __init__(self, meta):
        self.pool = ClientPool(meta.secret, CHUNK)

    async def state(self, addr: str, chunk: int):
        try:
            return await self.pool.get(addr).call("chunk_info", chunk=chunk)
        except DfsError as exc:
            return exc.errno

    async def gone(self, addr: str, chunk: int) -> bool:
        return await self.state(addr, chunk) == errno.ENOENT

    async def read(self, addr: str, chunk: int, version: int, length: int) -> bytes:
        reply = await self.pool.get(addr).call("read", chunk=chunk, version=version, offset=0,
                                               length=length)
        return reply["data"]

    async def write(self, grant: dict, data: bytes) -> None:
        for _, addr in grant["servers"]:
            client = self.pool.get(addr)
            await client.call("write", chunk=grant["chunk"], version=grant["version"],
                              offset=0, data=data)
            await client.call("sync", chunk=grant["chunk"], version=grant["version"])


def test_no_chunk_server_means_enospc(meta_factory):
    meta = meta_factory()

    async def body(c):
        s = await new_session(c)
        f = await make_file(c, ROOT, b"f")
        assert await c.call("chunk_read", ino=f["ino"], index=0) == {
            "chunk": 0, "version": 0, "servers": [], "zones": []}
        assert await error_of(c.call("chunk_write", ino=f["ino"], index=0,
                                     session=s)) == errno.ENOSPC
        assert await error_of(c.call("chunk_write", ino=f["ino"], index=0,
                                     session=999)) == errno.ESTALE
        assert await error_of(c.call("chunk_write", ino=ROOT, index=0,
                                     session=s)) == errno.EISDIR
        assert await error_of(c.call("cs_heartbeat", csid=42, capacity=1,
                                     used=0)) == errno.ENOENT

    meta.run(body)


def test_data_path_with_real_chunk_servers(meta_factory):
    meta = meta_factory(replicas=2, heartbeat_timeout=1.5, lease_seconds=1)
    addrs = [meta.start_chunkserver(f"cs{i}") for i in range(3)]

    async def body(c, replicas: Replicas):
        servers = await wait_until(lambda: count_alive(c, 3))
        assert sorted(s["addr"] for s in servers) == sorted(addrs)
        st = await c.call("statfs", ino=ROOT)
        assert st["blocks"] > 0 and st["bfree"] <= st["blocks"]

        s = await new_session(c)
        f = await make_file(c, ROOT, b"f", session=s)
        ino = f["ino"]
        grant = await c.call("chunk_write", ino=ino, index=0, session=s)
        assert grant["version"] == 1 and len(grant["servers"]) == 2
        assert grant["lease_until"] > 0
        data = os.urandom(CHUNK_SIZE)
        await replicas.write(grant, data)
        again = await c.call("chunk_write", ino=ino, index=0, session=s)
        assert (again["chunk"], again["version"]) == (grant["chunk"], 1), "the lease holds"
        second = await c.call("chunk_write", ino=ino, index=1, session=s)
        await replicas.write(second, b"z" * 1000)
        await c.call("reserve", ino=ino, session=s, end=CHUNK_SIZE + 1000)
        attr = await c.call("commit", ino=ino, session=s, size=CHUNK_SIZE + 1000, mtime=1)
        assert attr["blocks"] == (CHUNK_SIZE + 4096) // 512
        # Whole-chunk holes cost no blocks.
        await c.call("setattr", ino=ino, changes={"size": 5 * CHUNK_SIZE})
        assert (await c.call("getattr", ino=ino))["blocks"] == 2 * CHUNK_SIZE // 512
        assert (await c.call("chunk_read", ino=ino, index=3))["chunk"] == 0
        read = await c.call("chunk_read", ino=ino, index=0)
        assert read["chunk"] == grant["chunk"] and read["version"] == 1
        assert sorted(read["servers"]) == sorted(grant["servers"])

        # Truncating into chunk 0 cuts it on its replicas under a new version
        # and frees chunk 1.
        attr = await c.call("setattr", ino=ino, changes={"size": 100})
        assert attr["size"] == 100 and attr["blocks"] == 8
        read = await c.call("chunk_read", ino=ino, index=0)
        assert read["version"] == 2
        for _, addr in read["servers"]:
            got = await replicas.read(addr, read["chunk"], 2, 4096)
            assert got[:100] == data[:100] and got[100:] == bytes(len(got) - 100)
        assert (await c.call("chunk_read", ino=ino, index=1))["chunk"] == 0
        for _, addr in second["servers"]:
            await wait_until(lambda a=addr: replicas.gone(a, second["chunk"]))

        # Once the lease has run out, a write grant bumps the version on
        # every replica.
        await trio.sleep(1.1)
        bumped = await c.call("chunk_write", ino=ino, index=0, session=s)
        assert bumped["version"] == 3
        for _, addr in bumped["servers"]:
            assert (await replicas.state(addr, bumped["chunk"]))["version"] == 3

        # A dead server's replica is re-created on the third server.
        victim = bumped["servers"][0]
        index = addrs.index(victim[1])
        meta.chunkservers[index].send_signal(signal.SIGKILL)
        meta.chunkservers[index].wait()
        spare = next(a for a in addrs if a not in (srv[1] for srv in bumped["servers"]))

        async def repaired():
            read = await c.call("chunk_read", ino=ino, index=0)
            return read if sorted(a for _, a in read["servers"]) == sorted(
                [bumped["servers"][1][1], spare]) else None

        read = await wait_until(repaired, timeout=30)
        assert await replicas.read(spare, read["chunk"], 3, 100) == data[:100]
        status = await c.call("status")
        assert status["under_replicated"] == 0 and status["chunks"] == 1
        assert [s["alive"] for s in status["chunkservers"]].count(False) == 1

        # A replica reported bad is dropped and deleted.
        csid = {srv["addr"]: srv["csid"] for srv in status["chunkservers"]}
        await c.call("cs_bad_chunk", csid=csid[spare], chunk=read["chunk"], version=3)
        survivor = bumped["servers"][1]
        assert (await c.call("chunk_read", ino=ino, index=0))["servers"] == [survivor]
        await wait_until(lambda: replicas.gone(spare, read["chunk"]))

        # The dead server comes back with its current replica, which counts
        # again (the spare may meanwhile have been given a fresh copy).
        back = meta.start_chunkserver(f"cs{index}")

        async def restored():
            read = await c.call("chunk_read", ino=ino, index=0)
            held = read["servers"]
            return read if survivor in held and [victim[0], back] in held else None

        read = await wait_until(restored)
        assert await replicas.read(back, read["chunk"], 3, 100) == data[:100]

        # Deleting the file frees its chunk on every replica.
        await c.call("release", ino=ino, session=s)
        await c.call("unlink", parent=ROOT, name=b"f")
        for _, addr in read["servers"]:
            await wait_until(lambda a=addr: replicas.gone(a, read["chunk"]))
        assert (await c.call("status"))["chunks"] == 0

    run_with_replicas(meta, body)


def run_with_replicas(meta, body) -> None:
    """Run `async body(client, Replicas)` against `meta`, closing both after."""
    async def main():
        client, replicas = meta.client(), Replicas(meta)
        try:
            await body(client, replicas)
        finally:
            await replicas.pool.aclose()
            await client.aclose()

    trio.run(main)


async def count_alive(c, n: int):
    servers = await alive_servers(c)
    return servers if len(servers) == n else None
