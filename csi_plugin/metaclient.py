"""A synchronous metaserver client for gRPC's worker threads.

gRPC servicers run in a thread pool while dfs.rpc is trio code, so one trio
event loop lives in a background thread for the life of the plugin and every
call is handed to it with trio.from_thread.run. One dfs.rpc.Client (one TCP
connection, many requests in flight) serves all threads.

Like a mount, it learns the cluster id at its first call and checks it on
every reconnection: a metaserver restarted on an empty or another disk
answers EREMCHG, so no volume is made in, or deleted from, the wrong
database.
"""

import errno
import functools
import os
import stat
import threading

import trio

from dfs import rpc
from dfs.errors import DfsError
from dfs.ops import META
from dfs.records import Attr, QuotaInfo
from dfs.session import check_cluster

# A metaserver that does not answer within this many seconds fails the RPC
# with UNAVAILABLE instead of holding a gRPC worker forever.
CALL_TIMEOUT = 30.0
# How long idempotent calls are retried across reconnects.
RETRY_FOR = 10.0
# A health probe answers quickly, without retries: the prober has its own.
PROBE_TIMEOUT = 3.0
ROOT_INO = 1
READDIR_BATCH = 512


class MetaClient:
    def __init__(self, addr: str, secret: bytes, cluster: int = 0):
        self.addr = addr
        self._secret = secret
        self._token = None
        self._client: rpc.Client | None = None
        # The cluster id given, or learned at the first call (see dfs.ops
        # cluster_check); checked on every connection.
        self.cluster: int | None = cluster or None
        self._checked = False
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,),
                                        name="dfs-metaclient", daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._client = rpc.Client(self.addr, self._secret, META, retry_for=RETRY_FOR,
                                  on_reconnect=self._check_cluster)
        self._probe_client = rpc.Client(self.addr, self._secret, META,
                                        connect_timeout=PROBE_TIMEOUT)
        self._stop = trio.Event()
        self._ready.set()
        await self._stop.wait()
        await self._client.aclose()
        await self._probe_client.aclose()

    async def _check_cluster(self, call) -> None:
        found = await check_cluster(call, self.cluster, meta=self.addr)
        if self.cluster is None:
            self.cluster = found or 0
        self._checked = True

    async def _call(self, op: str, timeout: float, fields: dict):
        if not self._checked:
            # The first connection runs no on_reconnect: check (or learn) the id on it.
            await self._check_cluster(self._client.call)
        return await self._client.call(op, timeout, **fields)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def call(self, op: str, **fields):
        # Mutating operations carry a token so a retry after a lost reply is
        # answered from the metaserver's memory instead of applied twice.
        if "token" in META[op].fields and "token" not in fields:
            fields["token"] = os.urandom(16)
        return trio.from_thread.run(self._call, op, CALL_TIMEOUT, fields,
                                    trio_token=self._token)

    def reachable(self) -> bool:
        try:
            trio.from_thread.run(
                functools.partial(self._probe_client.call, "statfs", PROBE_TIMEOUT, ino=ROOT_INO),
                trio_token=self._token)
        except DfsError:
            return False
        return True

    # --- namespace helpers -------------------------------------------------
    def lookup(self, parent: int, name: str) -> Attr | None:
        try:
            return Attr.from_wire(self.call("lookup", parent=parent, name=name.encode()))
        except DfsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def ensure_dir(self, parent: int, name: str, mode: int) -> Attr:
        """The directory `name` under `parent`, created if missing (races are fine)."""
        found = self.lookup(parent, name)
        if found is not None:
            return found
        try:
            return Attr.from_wire(self.call("mkdir", parent=parent, name=name.encode(),
                                            mode=stat.S_IFDIR | mode, uid=0, gid=0))
        except DfsError as exc:
            if exc.errno != errno.EEXIST:
                raise
        return Attr.from_wire(self.call("lookup", parent=parent, name=name.encode()))

    def ensure_path(self, path: str, mode: int = 0o755) -> Attr:
        attr = Attr.from_wire(self.call("getattr", ino=ROOT_INO))
        for part in filter(None, path.split("/")):
            attr = self.ensure_dir(attr.ino, part, mode)
        return attr

    def entries(self, ino: int):
        """Yield (name, Attr) for every entry of directory `ino`."""
        offset = 0
        while True:
            reply = self.call("readdir", ino=ino, offset=offset, limit=READDIR_BATCH)
            for name, attr, next_offset in reply["entries"]:
                offset = next_offset
                if name not in (b".", b".."):
                    yield name.decode(errors="surrogateescape"), Attr.from_wire(attr)
            if reply["eof"] or not reply["entries"]:
                return

    def remove_tree(self, parent: int, name: str) -> None:
        """Remove `name` under `parent` and everything below it; missing is fine."""
        attr = self.lookup(parent, name)
        if attr is None:
            return
        if stat.S_ISDIR(attr.mode):
            for child, _ in list(self.entries(attr.ino)):
                self.remove_tree(attr.ino, child)
            op, extra = "rmdir", {}
        else:
            # Deleting a volume or a snapshot is meant: none of it goes to the trash.
            op, extra = "unlink", {"trash": False}
        try:
            self.call(op, parent=parent, name=name.encode(), **extra)
        except DfsError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def getxattr(self, ino: int, name: str) -> bytes | None:
        try:
            return self.call("getxattr", ino=ino, name=name.encode())["value"]
        except DfsError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOENT):
                return None
            raise

    def setxattr(self, ino: int, name: str, value: bytes) -> None:
        self.call("setxattr", ino=ino, name=name.encode(), value=value, flags=0)

    def quota(self, ino: int) -> QuotaInfo:
        return QuotaInfo.from_wire(self.call("quota_get", ino=ino))

    def set_quota(self, ino: int, size: int, inodes: int) -> QuotaInfo:
        return QuotaInfo.from_wire(self.call("quota_set", ino=ino, bytes=size, inodes=inodes))
