"""What a mount reports to Prometheus (`dfs mount --metrics-listen`): every
request the kernel sends it, by operation and outcome, with its latency, and
the bytes applications read and write through it. It shows where a slow
application's time goes: in the mount (FUSE requests) or behind it (the
servers' own request latencies, on their /metrics).

The handlers are wrapped on the one DfsFS instance, so a mount without
metrics runs exactly the code it ran before.
"""

import errno
import time
from contextvars import ContextVar
from functools import wraps

import pyfuse3

from .fs import DfsFS
from .metrics import Registry, process_gauges

# The request the current task is answering (each runs in a task of its own).
_answering: ContextVar[str | None] = ContextVar("answering", default=None)

# Every request DfsFS answers.
FUSE_OPS = ("lookup forget getattr setattr readlink mknod mkdir symlink link unlink rmdir "
            "rename opendir readdir releasedir fsyncdir statfs setxattr getxattr listxattr "
            "removexattr open create read write flush fsync release").split()


class MountStats:
    def __init__(self, registry: Registry):
        self.requests = registry.counter(
            "dfs_fuse_requests_total", "Requests from the kernel, by operation and outcome "
            "(ok or the errno name).", ("op", "result"))
        self.seconds = registry.histogram(
            "dfs_fuse_request_seconds", "Time the mount took to answer a request.", ("op",))
        self.read_bytes = 0
        self.written_bytes = 0
        registry.counted("dfs_fuse_read_bytes_total", "Bytes applications read through "
                         "the mount (beyond the kernel's page cache).", lambda: self.read_bytes)
        registry.counted("dfs_fuse_written_bytes_total", "Bytes applications wrote through "
                         "the mount.", lambda: self.written_bytes)

    def timed(self, op: str, handler):
        @wraps(handler)
        async def timed(*args, **kwargs):
            if _answering.get():
                # A handler calling another (flush calls fsync): one request.
                return await handler(*args, **kwargs)
            started = time.perf_counter()
            result = "ok"
            outer = _answering.set(op)
            try:
                reply = await handler(*args, **kwargs)
            except pyfuse3.FUSEError as exc:
                result = errno.errorcode.get(exc.errno, str(exc.errno))
                raise
            except BaseException:
                result = "EIO"
                raise
            finally:
                _answering.reset(outer)
                self.requests.inc(op, result)
                self.seconds.observe(time.perf_counter() - started, op)
            if op == "read":
                self.read_bytes += len(reply)
            elif op == "write":
                self.written_bytes += reply
            return reply
        return timed


def instrument(fs: DfsFS) -> Registry:
    """Count and time every request `fs` answers; return the registry to serve."""
    registry = Registry()
    process_gauges(registry)
    stats = MountStats(registry)
    registry.counted("dfs_fuse_replica_read_bytes_total", "Bytes the mount fetched from "
                     "chunk servers, by whether the replica was in the mount's zone (--zone; "
                     "'other' for all without one).", lambda: {
                         (where,): count for where, count in fs.chunkio.read_bytes.items()},
                     ("zone",))
    registry.gauge("dfs_fuse_dir_leases", "Folders this mount holds a lease on: it answers "
                   "lookups of names not in them itself.", lambda: len(fs.dirleases.leases))
    registry.counted("dfs_fuse_dir_lease_answers_total", "Lookups of a name not there "
                     "answered from a folder lease, without asking the metaserver.",
                     lambda: fs.dirleases.answered)
    if fs.ahead is not None:
        ahead = fs.ahead
        registry.counted("dfs_fuse_changes_made_ahead_total", "Changes to folders made "
                         "without waiting for the metaserver (--async-dirops), by whether it "
                         "then recorded them or refused them.", lambda: {
                             ("recorded",): ahead.recorded, ("refused",): ahead.refused},
                         ("outcome",))
        registry.gauge("dfs_fuse_changes_made_ahead_pending", "Changes made ahead that the "
                       "metaserver has not answered for yet.", lambda: ahead.made - ahead.done)
    for op in FUSE_OPS:
        setattr(fs, op, stats.timed(op, getattr(fs, op)))
    return registry
