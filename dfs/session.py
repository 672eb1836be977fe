"""A mount's link to the metaserver: the RPC client, the session that keeps
open files alive, and request tokens that make retried mutations safe."""

import errno
import os
import socket

import trio

from . import logs
from .errors import DfsError
from .ops import META
from .rpc import Client

log = logs.get_logger("client")


class MetaLink:
    def __init__(self, addr: str, secret: bytes, mountpoint: str, retry_for: float = 60.0):
        self.client = Client(addr, secret, META, retry_for=retry_for)
        self.mountpoint = mountpoint
        self.session = 0
        self.chunk_size = 0
        self.block_size = 0
        self.session_ttl = 60.0
        # Inodes this mount holds open, re-announced if the session is lost.
        self.open_inodes: dict[int, int] = {}

    async def call(self, op: str, **args):
        return await self.client.call(op, **args)

    async def mutate(self, op: str, **args):
        """A mutation with a fresh token: a retry after a lost reply is answered
        from the metaserver's memory instead of being applied twice."""
        return await self.client.call(op, token=os.urandom(16), **args)

    async def open_session(self) -> None:
        reply = await self.client.call("session_open", host=socket.gethostname(),
                                       mountpoint=self.mountpoint, pid=os.getpid())
        self.session = reply["session"]
        self.chunk_size = reply["chunk_size"]
        self.block_size = reply["block_size"]
        self.session_ttl = float(reply["session_ttl"])
        log.info("session opened", session=self.session, mountpoint=self.mountpoint)

    async def keep_alive(self) -> None:
        """Renew the session; after an expiry open a new one and re-register open files."""
        while True:
            await trio.sleep(max(self.session_ttl / 4, 0.5))
            try:
                await self.client.call("session_renew", session=self.session)
            except DfsError as exc:
                if exc.errno != errno.ESTALE:
                    log.warning("session renewal failed", session=self.session, error=str(exc))
                    continue
                log.warning("session expired; opening a new one", session=self.session)
                try:
                    await self.open_session()
                    for ino in list(self.open_inodes):
                        await self.client.call("open", ino=ino, session=self.session)
                except DfsError as exc2:
                    log.error("cannot restore the session", error=str(exc2))

    async def aclose(self) -> None:
        if self.session:
            try:
                await self.client.call("session_close", session=self.session)
            except DfsError:
                pass
        await self.client.aclose()
