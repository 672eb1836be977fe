"""Chunk servers with the real metaserver: registration, a bad replica found
by a read, and its repair by re-replication."""

import errno
import os
import signal
import stat
import subprocess
import sys

import pytest
import trio

from dfs import ops
from dfs.rpc import Client
from test_chunkserver_support import (SECRET, ChunkServerProcess, MiB, eventually,
                                      expect_errno, flip_byte, read_all, running)
from test_chunkserver_support import reap_processes  # noqa: F401 (an autouse fixture)


class MetaServerProcess:
    def __init__(self, base):
        self.ready_file = base / "meta.ready"
        self.log_path = base / "meta.log"
        self.data_dir = base / "meta"
        self.addr = ""

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "metaserver.main", "--listen", "127.0.0.1:0",
                 "--data-dir", str(self.data_dir), "--ready-file", str(self.ready_file),
                 "--replicas", "2", "--chunk-size", str(MiB), "--heartbeat-timeout", "3"],
                env=dict(os.environ, DFS_SECRET=SECRET.decode()), stdout=log, stderr=log)
        running.append(self.proc)

    async def wait_ready(self) -> str:
        with trio.fail_after(15):
            while not self.ready_file.exists():
                if self.proc.poll() is not None:
                    pytest.fail(f"metaserver exited: {self.log_path.read_text()}")
                await trio.sleep(0.02)
        self.addr = self.ready_file.read_text().strip()
        return self.addr

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)


@pytest.mark.timeout(120)
def test_bad_replica_is_repaired_through_the_metaserver(tmp_path):
    async def scenario():
        meta = MetaServerProcess(tmp_path)
        meta.start()
        servers = []
        clients = []
        try:
            await meta.wait_ready()
            servers = [ChunkServerProcess(tmp_path / f"cs{i}", meta.addr) for i in range(3)]
            for server in servers:
                server.start()
            for server in servers:
                await server.wait_ready()
            client = Client(meta.addr, SECRET, ops.META)
            clients.append(client)

            async def alive() -> int:
                status = await client.call("status")
                return sum(cs["alive"] for cs in status["chunkservers"])

            with trio.fail_after(15):
                while await alive() < 3:
                    await trio.sleep(0.1)

            session = (await client.call("session_open", host="test", mountpoint="/t",
                                         pid=os.getpid()))["session"]
            attr = await client.call("mknod", parent=1, name=b"file", mode=stat.S_IFREG | 0o644,
                                     rdev=0, uid=0, gid=0, session=session)
            grant = await client.call("chunk_write", ino=attr["ino"], index=0, session=session)
            chunk, version = grant["chunk"], grant["version"]
            holders = [addr for _, addr in grant["servers"]]
            assert len(holders) == 2
            data = os.urandom(MiB - 1000)
            by_addr = {s.addr: s for s in servers}
            for addr in holders:
                cs = Client(addr, SECRET, ops.CHUNK)
                clients.append(cs)
                await cs.call("write", chunk=chunk, version=version, offset=0, data=data)
                await cs.call("sync", chunk=chunk, version=version)

            bad_addr, good_addr = holders
            flip_byte(by_addr[bad_addr].data_dir, chunk, 4242)
            bad = Client(bad_addr, SECRET, ops.CHUNK)
            clients.append(bad)
            await expect_errno(errno.EIO, bad.call("read", chunk=chunk, version=version,
                                                   offset=0, length=MiB))
            await eventually(lambda: "bad replica reported" in by_addr[bad_addr].log(),
                             what="the metaserver to hear of the bad replica")

            async def locations() -> set[str]:
                reply = await client.call("chunk_read", ino=attr["ino"], index=0)
                return {addr for _, addr in reply["servers"]}

            # The metaserver drops the bad replica and copies the good one to a
            # server that lacks it (possibly the reporter, once it deleted it).
            with trio.fail_after(30):
                while good_addr not in await locations() or len(await locations()) != 2:
                    await trio.sleep(0.2)
            # The copy was made under a new version, fencing out the lease holder.
            version = (await client.call("chunk_read", ino=attr["ino"], index=0))["version"]
            for addr in await locations():
                holder = Client(addr, SECRET, ops.CHUNK)
                clients.append(holder)
                assert await read_all(holder, chunk, version, len(data)) == data
        finally:
            for c in clients:
                await c.aclose()
            for server in servers:
                server.stop()
            meta.stop()

    trio.run(scenario)
