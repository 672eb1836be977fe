"""A mount's link to the metaserver: the RPC client, the session that keeps
open files alive, and request tokens that make retried mutations safe."""

import errno
import os
import socket
from typing import Awaitable, Callable

import trio

from . import logs
from .errors import DfsError
from .ops import META
from .rpc import Client

log = logs.get_logger("client")

# Requests that need not wait for the files this mount made ahead to reach the
# metaserver (see MetaLink.ahead): none of them reads or changes a folder.
UNORDERED = frozenset({"dir_poll", "dir_lease", "inode_grant", "session_renew"})
# The protocol from which reads name their session (`reader`).
READER_PROTOCOL = 3


async def check_cluster(call, cluster: int | None, **where) -> int | None:
    """Send cluster_check with `call` (cluster 0 or None only asks); return the
    database's cluster id, None from a metaserver older than cluster ids.
    EREMCHG, logged with `where`, if the database is another cluster's."""
    try:
        reply = await call("cluster_check", cluster=cluster or 0)
    except DfsError as exc:
        if exc.errno == errno.EREMCHG:
            log.error("the metaserver serves another cluster now", error=exc.message, **where)
        # ENOSYS: a metaserver older than cluster ids (during an upgrade).
        if exc.errno != errno.ENOSYS:
            raise
        return None
    return reply.get("cluster", cluster)


class MetaLink:
    def __init__(self, addr: str, secret: bytes, mountpoint: str, retry_for: float = 60.0):
        self.client = Client(addr, secret, META, retry_for=retry_for,
                             on_reconnect=self._reannounce)
        self.mountpoint = mountpoint
        self.session = 0
        # [directory ino, attachment epoch] the session is opened under, if any
        # (see metaserver/fences.py): once the epoch moves, changes are refused.
        self.fence: list[int] | None = None
        self.chunk_size = 0
        self.block_size = 0
        self.session_ttl = 60.0
        # The cluster the first session was opened in; every later connection
        # must be to its database (see cluster_check).
        self.cluster: int | None = None
        # Inodes this mount holds open -> handles, counting opens from when
        # they are sent and releases until they are answered: the metaserver
        # keeps these counts in memory only, and a re-announce of them may
        # then over-count (the file lives a little longer) but never under-count.
        self.open_inodes: dict[int, int] = {}
        # Held inodes whose fdatasyncs the metaserver knows to be quiet.
        self.quiet: set[int] = set()
        # The zones of the chunk servers on this host (as the metaserver sees
        # them connect from where this mount does), renewed with the session.
        self.zones: frozenset[str] = frozenset()
        # Called whenever a new connection replaces a lost one, before
        # anything is sent on it: what was promised on the old one is let go.
        self.reconnected: list[Callable[[], None]] = []
        # With files made ahead (createqueue.py): awaited before every request
        # but the UNORDERED ones, until the metaserver knows every file made
        # before it; and, on a new connection, given `call` to send them
        # before anything else names the session.
        self.ahead: Callable[[str, dict], Awaitable[None]] | None = None
        self.resend: Callable[[Callable], Awaitable[None]] | None = None

    def hold(self, ino: int) -> None:
        self.open_inodes[ino] = self.open_inodes.get(ino, 0) + 1

    def unhold(self, ino: int) -> None:
        remaining = self.open_inodes.pop(ino, 1) - 1
        if remaining:
            self.open_inodes[ino] = remaining
        else:
            self.quiet.discard(ino)

    async def _reannounce(self, call) -> None:
        """Check that the metaserver still serves this mount's cluster, then
        tell it what this mount holds open (it may have restarted), and that
        the session is live (the metaserver then knows it holds no folder
        lease from before: see metaserver/dirleases.py)."""
        for let_go in self.reconnected:
            let_go()
        if self.cluster is not None:
            await check_cluster(call, self.cluster, mountpoint=self.mountpoint)
        if not self.session:
            return
        if self.resend is not None:
            await self.resend(call)
        for ino, count in list(self.open_inodes.items()):
            try:
                await call("open", ino=ino, session=self.session, count=count,
                           quiet=ino in self.quiet or None)
            except DfsError as exc:
                if exc.errno == errno.ESTALE:
                    return  # the session expired: keep_alive opens a new one and re-announces
                if exc.errno == errno.ENOENT:
                    log.warning("open file is gone", ino=ino, session=self.session)
                    continue
                raise
        log.info("re-announced open files", session=self.session, files=len(self.open_inodes))
        try:
            self._learn_zones(await call("session_renew", session=self.session))
        except DfsError as exc:
            if exc.errno != errno.ESTALE:
                raise

    async def call(self, op: str, **args):
        if self.ahead is not None and op not in UNORDERED:
            await self.ahead(op, args)
        return await self.client.call(op, **args)

    async def read(self, op: str, **args):
        """A read naming a folder, made as this mount's session (`reader`):
        its own exclusive folder leases are not recalled for it."""
        if self.session and self.client.peer_protocol >= READER_PROTOCOL:
            args["reader"] = self.session
        return await self.call(op, **args)

    async def mutate(self, op: str, **args):
        """A mutation with a fresh token: a retry after a lost reply is answered
        from the metaserver's memory instead of being applied twice."""
        return await self.change(op, token=os.urandom(16), **args)

    async def change(self, op: str, **args):
        """A change to the namespace, made as this mount's session (`writer`)."""
        return await self.call(op, writer=self.session or None, **args)

    async def open_session(self) -> None:
        reply = await self.client.call("session_open", host=socket.gethostname(),
                                       mountpoint=self.mountpoint, pid=os.getpid(),
                                       fence=self.fence)
        self.session = reply["session"]
        self.chunk_size = reply["chunk_size"]
        self.block_size = reply["block_size"]
        self.session_ttl = float(reply["session_ttl"])
        if self.cluster is None:
            # None from a metaserver older than cluster ids.
            self.cluster = reply.get("cluster")
        self._learn_zones(reply)
        log.info("session opened", session=self.session, mountpoint=self.mountpoint,
                 fence=self.fence)

    def _learn_zones(self, reply: dict) -> None:
        zones = frozenset(reply.get("zones") or ())
        if zones != self.zones:
            log.info("reading from chunk servers in zones of this host first",
                     zones=sorted(zones), mountpoint=self.mountpoint)
            self.zones = zones

    async def keep_alive(self) -> None:
        """Renew the session; after an expiry open a new one and re-register open files."""
        while True:
            await trio.sleep(max(self.session_ttl / 4, 0.5))
            try:
                self._learn_zones(await self.client.call("session_renew", session=self.session))
            except DfsError as exc:
                if exc.errno != errno.ESTALE:
                    log.warning("session renewal failed", session=self.session, error=str(exc))
                    continue
                log.warning("session expired; opening a new one", session=self.session)
                try:
                    await self.open_session()
                    await self._reannounce(self.client.call)
                except DfsError as exc2:
                    log.error("cannot restore the session", error=str(exc2))

    async def aclose(self) -> None:
        if self.session:
            try:
                await self.client.call("session_close", session=self.session)
            except DfsError:
                pass
        await self.client.aclose()
