"""A real dfs-metaserver process for the metaserver tests, and a way to talk to it.

Tests import the `meta` fixture from here; each gets its own process, data
folder and secret, stopped (killed if it must) when the test ends.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from dfs.errors import DfsError
from dfs.ops import CHUNK, META, META_CS
from dfs.rpc import Client
from faults import stop_process

ROOT = 1
CHUNK_SIZE = 1 << 20
SCHEMA = {**META, **META_CS}
REPO = Path(__file__).resolve().parent.parent


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[2]} exited with {proc.returncode}")
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not appear")


class MetaProcess:
    def __init__(self, base: Path, **options):
        self.base = base
        self.data_dir = base / "meta"
        self.secret_file = base / "secret"
        self.secret_file.write_text(os.urandom(24).hex() + "\n")
        self.secret = self.secret_file.read_bytes().strip()
        self.options = {"chunk_size": CHUNK_SIZE, **options}
        self.proc: subprocess.Popen | None = None
        self.addr = ""
        self.chunkservers: list[subprocess.Popen] = []

    def start(self, listen: str = "127.0.0.1:0") -> "MetaProcess":
        ready = self.base / "meta.ready"
        ready.unlink(missing_ok=True)
        flags = []
        for key, value in self.options.items():
            flags += ["--" + key.replace("_", "-"), str(value)]
        self.log = open(self.base / "meta.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metaserver.main", "--listen", listen,
             "--data-dir", str(self.data_dir), "--secret-file", str(self.secret_file),
             "--ready-file", str(ready), *flags],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        self.addr = wait_for_file(ready, self.proc)
        return self

    def stop(self) -> int:
        code = stop_process(self.proc)
        self.log.close()
        return code

    def restart(self) -> None:
        """Stop cleanly and start again on the same address (chunk servers keep it)."""
        assert self.stop() == 0
        self.start(self.addr)

    def start_chunkserver(self, name: str, *flags: str) -> str:
        """Start a real dfs-chunkserver registering with this metaserver, with
        `flags` besides; return its address."""
        ready = self.base / f"{name}.ready"
        ready.unlink(missing_ok=True)
        log = open(self.base / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "chunkserver.main", "--listen", "127.0.0.1:0",
             "--meta", self.addr, "--data-dir", str(self.base / name),
             "--secret-file", str(self.secret_file), "--ready-file", str(ready),
             "--heartbeat-interval", "0.2", "--scrub-rate", "0", *flags],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.chunkservers.append(proc)
        return wait_for_file(ready, proc)

    def client(self, secret: bytes | None = None, schema=None) -> Client:
        return Client(self.addr, secret or self.secret, schema or SCHEMA)

    def chunk_client(self, addr: str) -> Client:
        return Client(addr, self.secret, CHUNK)

    def run(self, body, *args):
        """Run `async body(client, *args)` against this metaserver."""
        async def main():
            client = self.client()
            try:
                return await body(client, *args)
            finally:
                await client.aclose()
        return trio.run(main)

    def cleanup(self) -> None:
        for proc in self.chunkservers:
            stop_process(proc)
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


@pytest.fixture
def meta_factory(tmp_path):
    started = []

    def make(**options) -> MetaProcess:
        base = tmp_path / f"cluster{len(started)}"
        base.mkdir()
        process = MetaProcess(base, **options)
        started.append(process)
        return process.start()

    yield make
    for process in started:
        process.cleanup()


@pytest.fixture
def meta(meta_factory):
    return meta_factory()


async def new_session(c: Client) -> int:
    reply = await c.call("session_open", host="test", mountpoint="/mnt", pid=os.getpid())
    return reply["session"]


async def make_file(c: Client, parent: int, name: bytes, mode: int = 0o644, **extra) -> dict:
    return await c.call("mknod", parent=parent, name=name, mode=0o100000 | mode, rdev=0,
                        uid=0, gid=0, **extra)


async def make_dir(c: Client, parent: int, name: bytes, mode: int = 0o755) -> dict:
    return await c.call("mkdir", parent=parent, name=name, mode=mode, uid=0, gid=0)


async def names(c: Client, ino: int) -> list[bytes]:
    found, offset = [], 0
    while True:
        reply = await c.call("readdir", ino=ino, offset=offset, limit=1000)
        found += [entry[0] for entry in reply["entries"]]
        if reply["eof"]:
            return sorted(found)
        offset = reply["entries"][-1][2]


async def error_of(call) -> int:
    """The errno a call fails with (0 if it succeeds)."""
    try:
        await call
    except DfsError as exc:
        return exc.errno
    return 0
