"""Shared by the chunk server tests: real `dfs-chunkserver` processes, a
stand-in metaserver speaking the real META_CS protocol, and helpers.

The stand-in (a dfs.rpc.Server) records what the chunk servers tell it and
hands them work, so a test can check the link precisely.
"""

import errno
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from chunkserver.chunkstore import ChunkStore
from dfs import ops
from dfs.auth import client_handshake
from dfs.errors import DfsError
from dfs.framing import MAX_DATA, FramedStream
from dfs.rpc import Client, Server, parse_addr

SECRET = b"chunkserver-tests-secret-0123456789"
BIN = Path(sys.executable).with_name("dfs-chunkserver")
MiB = 1024 * 1024

running: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def reap_processes():
    """Kill any chunk server a failed test left running."""
    yield
    while running:
        proc = running.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the stand-in metaserver --------------------------------------------------

class StandInMeta:
    """Records registrations, heartbeats and bad-replica reports; hands out the
    deletions and copies a test queues for a chunk server."""

    def __init__(self):
        self.registrations: list[dict] = []
        self.heartbeats: dict[int, int] = {}
        self.bad: list[tuple[int, int]] = []
        self.on_register_delete: list[int] = []
        self.deletes: dict[int, list[int]] = {}
        self.copies: dict[int, list[list]] = {}
        self.addr_of: dict[int, str] = {}
        self._next_csid = 100
        self._scope: trio.CancelScope | None = None

    def csid_of(self, addr: str) -> int:
        return next(csid for csid, a in self.addr_of.items() if a == addr)

    async def cs_register(self, csid, addr, capacity, used, chunks, cluster, position,
                          zone=None):
        self.registrations.append({"csid": csid, "addr": addr, "capacity": capacity,
                                   "used": used, "chunks": sorted(map(tuple, chunks))})
        if csid is None or csid not in self.addr_of:
            csid = csid if csid is not None else self._next_csid
            self._next_csid += 1
        self.addr_of[csid] = addr
        return {"csid": csid, "delete": self.on_register_delete, "cluster": 1}

    async def cs_heartbeat(self, csid, capacity, used):
        if csid not in self.addr_of:
            raise DfsError(errno.ENOENT, f"unknown chunk server {csid}")
        self.heartbeats[csid] = self.heartbeats.get(csid, 0) + 1
        return {"delete": self.deletes.pop(csid, []), "replicate": self.copies.pop(csid, [])}

    async def cs_bad_chunk(self, csid, chunk, version):
        self.bad.append((chunk, version))
        return {}

    async def start(self, nursery: trio.Nursery, port: int = 0) -> str:
        server = Server("meta-standin", ops.META_CS,
                        {name: getattr(self, name) for name in ops.META_CS}, SECRET)

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as self._scope:
                await server.serve("127.0.0.1", port, task_status=task_status)

        host, bound = await nursery.start(serve)
        return f"{host}:{bound}"

    def stop(self) -> None:
        self._scope.cancel()


# --- chunk server processes ---------------------------------------------------

class ChunkServerProcess:
    def __init__(self, data_dir: Path, meta: str, scrub_rate: float = 0, flags: tuple = ()):
        self.data_dir = data_dir
        self.meta = meta
        self.scrub_rate = scrub_rate
        self.flags = flags
        self.ready_file = data_dir.with_name(data_dir.name + ".ready")
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.proc: subprocess.Popen | None = None
        self.addr = ""

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        env = dict(os.environ, DFS_SECRET=SECRET.decode())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN), "--listen", "127.0.0.1:0", "--meta", self.meta,
                 "--data-dir", str(self.data_dir), "--ready-file", str(self.ready_file),
                 "--heartbeat-interval", "0.2", "--scrub-rate", str(self.scrub_rate),
                 *self.flags],
                env=env, stdout=log, stderr=log)
        running.append(self.proc)

    async def wait_ready(self) -> str:
        with trio.fail_after(15):
            while not self.ready_file.exists():
                if self.proc.poll() is not None:
                    pytest.fail(f"chunk server exited: {self.log_path.read_text()}")
                await trio.sleep(0.02)
        self.addr = self.ready_file.read_text().strip()
        return self.addr

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text()


class Cluster:
    def __init__(self, meta: StandInMeta, servers: list[ChunkServerProcess]):
        self.meta = meta
        self.servers = servers
        self._clients: list[Client] = []

    def client(self, index: int = 0, secret: bytes = SECRET) -> Client:
        client = Client(self.servers[index].addr, secret, ops.CHUNK)
        self._clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


@asynccontextmanager
async def cluster(tmp_path: Path, servers: int = 1, scrub_rate: float = 0,
                  data_dirs: list[Path] | None = None, flags: tuple = ()):
    meta = StandInMeta()
    dirs = data_dirs or [tmp_path / f"cs{i}" for i in range(servers)]
    procs = []
    async with trio.open_nursery() as nursery:
        meta_addr = await meta.start(nursery)
        c = Cluster(meta, procs)
        try:
            for data_dir in dirs:
                procs.append(ChunkServerProcess(data_dir, meta_addr, scrub_rate, flags))
                procs[-1].start()
            for proc in procs:
                await proc.wait_ready()
            yield c
        finally:
            await c.aclose()
            for proc in procs:
                proc.stop()
            nursery.cancel_scope.cancel()


async def eventually(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    pytest.fail(f"timed out waiting for {what}")


async def expect_errno(code: int, call) -> DfsError:
    with pytest.raises(DfsError) as info:
        await call
    assert info.value.errno == code, str(info.value)
    return info.value


def flip_byte(data_dir: Path, chunk: int, offset: int) -> None:
    data_path, _ = ChunkStore(data_dir).paths(chunk)
    with open(data_path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


async def read_all(client: Client, chunk: int, version: int, length: int) -> bytes:
    pieces = []
    for offset in range(0, length, MAX_DATA):
        reply = await client.call("read", chunk=chunk, version=version, offset=offset,
                                  length=min(MAX_DATA, length - offset))
        pieces.append(reply["data"])
    return b"".join(pieces)


def apply(model: bytearray, offset: int, data: bytes) -> None:
    if len(model) < offset + len(data):
        model.extend(bytes(offset + len(data) - len(model)))
    model[offset:offset + len(data)] = data


async def raw_connection(addr: str, handshake: bool = True) -> FramedStream:
    host, port = parse_addr(addr)
    framed = FramedStream(await trio.open_tcp_stream(host, port))
    if handshake:
        await client_handshake(framed, SECRET)
    return framed


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.fail_after(10):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
    return True
