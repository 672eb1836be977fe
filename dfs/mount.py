"""The mount process: one FUSE session serving one mountpoint.

`mount_background` starts this module as a detached process (its own session,
so it outlives the command or plugin that started it) and returns once the
mount is live or has failed, reporting why.
"""

import argparse
import errno
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from . import logs
from .allocator import keep_large_buffers
from .chunkio import ChunkIO
from .config import ClusterRef, add_cluster_id_arg, address_arg, load_secret, zone_arg
from .errors import DfsError
from .fs import DfsFS
from .metrics import serve as serve_metrics
from .metrics import serve_unix as serve_metrics_unix
from .mountmetrics import instrument
from .openfile import MIN_READ_CACHE_BYTES, READ_CACHE_BYTES
from .rpc import parse_addr
from .session import READER_PROTOCOL, MetaLink, check_cluster

log = logs.get_logger("client")

MOUNT_TIMEOUT = 30.0
READ_AHEAD_KB = 4096
# pyfuse3 ends a request task whenever more than this many wait for the next
# request, and starts a new one whenever none does: with its default of one,
# the requests of a database's threads make it start and end tasks over and over.
IDLE_REQUEST_TASKS = 16
MIB = 1024 * 1024


@dataclass(frozen=True)
class MountOptions:
    """What one mount serves and how: the folder, whether it may change
    anything, the attachment epoch it changes it under, how much of what it
    reads it keeps in memory, whether it serves extended attributes, and
    which replicas it reads first."""

    subdir: str = "/"
    read_only: bool = False
    read_cache_mib: int = READ_CACHE_BYTES // MIB
    epoch: int = 0
    # HOST:PORT to serve Prometheus metrics on ("": none).
    metrics_listen: str = ""
    # A unix socket to serve the same on, for a local collector ("": none).
    metrics_socket: str = ""
    xattrs: bool = True
    # The cluster whose database the metaserver must serve (0: learned at start).
    cluster: int = 0
    # Replicas in this zone are read first ("": those in the zones of the
    # chunk servers on this host).
    zone: str = ""
    # Make changes in folders ahead of the metaserver (changequeue.py).
    async_dirops: bool = False

    def fuse(self) -> set[str]:
        options = {"default_permissions", "allow_other", "fsname=dfs:" + self.subdir,
                   "subtype=dfs"}
        if self.read_only:
            options.add("ro")
        return options

    def command_line(self) -> list[str]:
        """The same options for the mount process (`python -m dfs.mount`)."""
        argv = ["--subdir", self.subdir, "--read-cache", str(self.read_cache_mib)]
        if self.epoch:
            argv += ["--epoch", str(self.epoch)]
        if self.metrics_listen:
            argv += ["--metrics-listen", self.metrics_listen]
        if self.metrics_socket:
            argv += ["--metrics-socket", self.metrics_socket]
        if not self.xattrs:
            argv.append("--no-xattrs")
        if self.cluster:
            argv += ["--cluster-id", f"{self.cluster:x}"]
        if self.zone:
            argv += ["--zone", self.zone]
        if self.async_dirops:
            argv.append("--async-dirops")
        return argv + ["--read-only"] if self.read_only else argv


def read_cache_mib(text: str) -> int:
    """An argparse type: the read cache's size in MiB, no less than read-ahead needs."""
    least = MIN_READ_CACHE_BYTES // MIB
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MiB") from None
    if value < least:
        raise argparse.ArgumentTypeError(
            f"the read cache takes at least {least} MiB (room for one reader's read-ahead "
            f"twice over); {value} is too little")
    return value


def add_read_cache_option(parser: argparse.ArgumentParser) -> None:
    """--read-cache, which `dfs up` takes too."""
    parser.add_argument(
        "--read-cache", type=read_cache_mib, default=MountOptions.read_cache_mib, metavar="MIB",
        help="MiB of file data the mount keeps in memory for the reads that miss the "
             "kernel's page cache: read-ahead and the 64 KiB blocks of random reads, shared "
             f"by all files (default {MountOptions.read_cache_mib}; at least "
             f"{MIN_READ_CACHE_BYTES // MIB}). More keeps a larger working set of random "
             "reads off the chunk servers, at that much more memory per mount")


def add_xattrs_option(parser: argparse.ArgumentParser) -> None:
    """--no-xattrs, which `dfs up` takes too."""
    parser.add_argument(
        "--no-xattrs", dest="xattrs", action="store_false",
        help="serve no extended attributes: getfattr, setfattr and the like fail with "
             "'Operation not supported', and file capabilities (setcap) do not apply. In "
             "return the kernel stops asking the mount for security.capability before "
             "every write, one request in two of small random writes (as MooseFS's "
             "mfsnoxattrs). For volumes of databases and other small-write workloads "
             "that use no extended attributes. Attributes already set are kept, and "
             "other mounts still serve them")


def add_async_dirops_option(parser: argparse.ArgumentParser) -> None:
    """--async-dirops, which `dfs up` takes too."""
    parser.add_argument(
        "--async-dirops", action="store_true",
        help="in a folder where this mount makes changes and no other mount looks (a "
             "folder lease shows it), answer creating a file or folder, removing a file "
             "and renaming within the folder at once, and tell the metaserver right after, "
             "many changes in one request. Every other mount still sees each change the "
             "moment it looks, and fsync of a file or folder waits until the changes "
             "before it are recorded; a change not yet recorded is lost if this host "
             "fails, as on a local filesystem before fsync. Such changes are several "
             "times faster. Default: each change waits until the metaserver recorded it")


def add_mount_options(parser: argparse.ArgumentParser) -> None:
    """The options `dfs mount` and the mount process share."""
    parser.add_argument("--subdir", default="/", metavar="PATH",
                        help="mount only this folder of the cluster, e.g. /volumes/pvc-1")
    parser.add_argument("--read-only", action="store_true", help="refuse every change")
    parser.add_argument(
        "--epoch", type=epoch_number, default=0, metavar="N",
        help="change the --subdir folder only while its attachment epoch is N (as 'dfs "
             "fence' or the CSI plugin's ControllerPublishVolume handed it out); once the "
             "folder is fenced again, every change through this mount fails with EROFS. "
             "Default: the mount is never fenced")
    parser.add_argument("--metrics-listen", type=address_arg, metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics: every "
                             "request from the kernel by operation, with its latency, and "
                             "the bytes read and written (default: not served)")
    parser.add_argument("--metrics-socket", metavar="PATH",
                        help="serve the same metrics on a unix socket at PATH, readable by "
                             "root only (the CSI node plugin gathers its volumes' this way)")
    parser.add_argument(
        "--zone", type=zone_arg, metavar="NAME",
        help="the zone this mount is in, as chunk servers name theirs (dfs-chunkserver "
             "--zone): reads go to a chunk's replica in this zone when it has one, and to "
             "the others only when it has none or that one fails, so that a mount beside "
             "a chunk server reads from it rather than across the network. Default: the "
             "zones of the chunk servers on this host, as the metaserver sees them (they "
             "reach it from the address this mount does), learnt again at each renewal of "
             "its session; with none there, reads of different chunks take turns over "
             "their replicas (as they do given a zone no server is in, e.g. 'none')")
    add_read_cache_option(parser)
    add_xattrs_option(parser)
    add_async_dirops_option(parser)
    add_cluster_id_arg(parser, "the mount refuses (EREMCHG)")


def epoch_number(text: str) -> int:
    """An argparse type: a positive attachment epoch."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"an epoch is a whole number from 1 on, not {text!r}")
    return value


def options_from_args(args: argparse.Namespace) -> MountOptions:
    return MountOptions(subdir=args.subdir, read_only=args.read_only,
                        read_cache_mib=args.read_cache, epoch=args.epoch,
                        metrics_listen=args.metrics_listen or "",
                        metrics_socket=args.metrics_socket or "", xattrs=args.xattrs,
                        cluster=args.cluster_id, zone=args.zone or "",
                        async_dirops=args.async_dirops)


class ReadyPipe:
    """Tells the starting process, once, whether the mount came up."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def tell(self, message: str) -> None:
        if self.fd is not None:
            os.write(self.fd, message.encode() + b"\n")
            os.close(self.fd)
            self.fd = None


async def serve(cluster: ClusterRef, mountpoint: str, options: MountOptions,
                ready: ReadyPipe) -> None:
    meta = MetaLink(cluster.meta, cluster.secret, mountpoint)
    given = (options.zone,)
    chunkio = ChunkIO(cluster.secret, zones=(lambda: given) if options.zone else (
        lambda: meta.zones))
    if options.cluster:
        meta.cluster = options.cluster
        await check_cluster(meta.call, options.cluster, mountpoint=mountpoint)
    root = (await meta.call("resolve", path=options.subdir.encode()))["ino"]
    if options.epoch:
        meta.fence = [root, options.epoch]
    await meta.open_session()
    async with trio.open_nursery() as nursery:
        async_dirops = options.async_dirops and not options.read_only
        if async_dirops and meta.client.peer_protocol < READER_PROTOCOL:
            log.warning("the metaserver is too old for changes made ahead; each waits",
                        mountpoint=mountpoint)
            async_dirops = False
        fs = DfsFS(meta, chunkio, root, nursery, options.read_only,
                   options.read_cache_mib * MIB, options.xattrs, async_dirops)
        registry = instrument(fs) if options.metrics_listen or options.metrics_socket else None
        if options.metrics_listen:
            bound = await nursery.start(serve_metrics, registry,
                                        *parse_addr(options.metrics_listen))
            log.info("serving metrics", addr="%s:%d" % bound, mountpoint=mountpoint)
        if options.metrics_socket:
            await nursery.start(serve_metrics_unix, registry, options.metrics_socket)
            log.info("serving metrics", socket=options.metrics_socket, mountpoint=mountpoint)
        pyfuse3.init(fs, mountpoint, options.fuse())
        log.info("mounted", mountpoint=mountpoint, subdir=options.subdir, meta=cluster.meta,
                 session=meta.session, read_only=options.read_only, epoch=options.epoch,
                 read_cache_mib=options.read_cache_mib, xattrs=options.xattrs,
                 async_dirops=async_dirops,
                 zone=options.zone or "that of this host's chunk servers")
        ready.tell("ok")
        nursery.start_soon(meta.keep_alive)
        nursery.start_soon(fs.record_quiet_syncs)
        nursery.start_soon(trio.to_thread.run_sync, _widen_readahead, mountpoint)
        nursery.start_soon(_stop_on_signal, nursery)
        try:
            await pyfuse3.main(min_tasks=IDLE_REQUEST_TASKS)
        finally:
            with trio.CancelScope(shield=True):
                await fs.close()
            pyfuse3.close(unmount=True)
            nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await meta.aclose()
        await chunkio.aclose()
    log.info("unmounted", mountpoint=mountpoint)


def _widen_readahead(mountpoint: str) -> None:
    """Let the kernel read ahead in large requests: fewer, bigger reads reach
    the client, which fetches whole segments from the chunk servers anyway."""
    dev = os.stat(mountpoint).st_dev
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        path.write_text(str(READ_AHEAD_KB))
    except OSError as exc:
        log.warning("cannot widen read-ahead", mountpoint=mountpoint, error=str(exc))


async def _stop_on_signal(nursery: trio.Nursery) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("stopping on signal", signal=signum)
            pyfuse3.terminate()
            return


def run_foreground(cluster: ClusterRef, mountpoint: str, options: MountOptions,
                   ready_fd: int | None = None) -> int:
    ready = ReadyPipe(ready_fd)
    keep_large_buffers()
    try:
        trio.run(serve, cluster, mountpoint, options, ready)
    except (DfsError, RuntimeError, OSError) as exc:
        log.error("mount failed", mountpoint=mountpoint, error=str(exc))
        ready.tell(f"error: {exc}")
        print(f"dfs mount: {exc}", file=sys.stderr)
        return 1
    return 0


def mount_background(cluster: ClusterRef, mountpoint: str, options: MountOptions,
                     log_file: str | None) -> None:
    """Start a detached mount process; return once it is mounted or raise DfsError."""
    read_end, write_end = os.pipe()
    log_path = Path(log_file) if log_file else Path("/dev/null")
    env = dict(os.environ, DFS_SECRET=cluster.secret.decode())
    command = [sys.executable, "-m", "dfs.mount", "--meta", cluster.meta,
               *options.command_line(), "--ready-fd", str(write_end), mountpoint]
    with open(log_path, "ab") as log_out:
        subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_out, stderr=log_out,
                         pass_fds=(write_end,), start_new_session=True, env=env,
                         close_fds=True)
    os.close(write_end)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    answer = b""
    with os.fdopen(read_end, "rb") as ready:
        while time.monotonic() < deadline and not answer.endswith(b"\n"):
            piece = ready.read(1)
            if not piece:
                break
            answer += piece
    if answer != b"ok\n":
        reason = answer.decode(errors="replace").strip() or "the mount process exited"
        where = f"; see {log_file}" if log_file else ""
        raise DfsError(errno.EIO, f"mounting {mountpoint} failed: {reason}{where}")


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dfs.mount",
        description="Serve one dfs mount in the foreground (used by 'dfs mount').")
    parser.add_argument("--meta", required=True, metavar="HOST:PORT")
    add_mount_options(parser)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("mountpoint")
    args = parser.parse_args()
    logs.setup(args.log_level)
    cluster = ClusterRef(args.meta, load_secret(None))
    return run_foreground(cluster, args.mountpoint, options_from_args(args), args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
