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
from pathlib import Path

import pyfuse3
import trio

from . import logs
from .allocator import keep_large_buffers
from .chunkio import ChunkIO
from .config import ClusterRef, load_secret
from .errors import DfsError
from .fs import DfsFS
from .session import MetaLink

log = logs.get_logger("client")

MOUNT_TIMEOUT = 30.0
READ_AHEAD_KB = 4096


def fuse_options(subdir: str, read_only: bool) -> set[str]:
    options = {"default_permissions", "allow_other", "fsname=dfs:" + subdir, "subtype=dfs"}
    if read_only:
        options.add("ro")
    return options


class ReadyPipe:
    """Tells the starting process, once, whether the mount came up."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def tell(self, message: str) -> None:
        if self.fd is not None:
            os.write(self.fd, message.encode() + b"\n")
            os.close(self.fd)
            self.fd = None


async def serve(cluster: ClusterRef, mountpoint: str, subdir: str, read_only: bool,
                ready: ReadyPipe) -> None:
    meta = MetaLink(cluster.meta, cluster.secret, mountpoint)
    chunkio = ChunkIO(cluster.secret)
    await meta.open_session()
    root = (await meta.call("resolve", path=subdir.encode()))["ino"]
    async with trio.open_nursery() as nursery:
        fs = DfsFS(meta, chunkio, root, nursery, read_only)
        pyfuse3.init(fs, mountpoint, fuse_options(subdir, read_only))
        log.info("mounted", mountpoint=mountpoint, subdir=subdir, meta=cluster.meta,
                 session=meta.session)
        ready.tell("ok")
        nursery.start_soon(meta.keep_alive)
        nursery.start_soon(fs.record_quiet_syncs)
        nursery.start_soon(trio.to_thread.run_sync, _widen_readahead, mountpoint)
        nursery.start_soon(_stop_on_signal, nursery)
        try:
            await pyfuse3.main()
        finally:
            with trio.CancelScope(shield=True):
                await fs.page_feed.close()
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


def run_foreground(cluster: ClusterRef, mountpoint: str, subdir: str, read_only: bool,
                   ready_fd: int | None = None) -> int:
    ready = ReadyPipe(ready_fd)
    keep_large_buffers()
    try:
        trio.run(serve, cluster, mountpoint, subdir, read_only, ready)
    except (DfsError, RuntimeError, OSError) as exc:
        log.error("mount failed", mountpoint=mountpoint, error=str(exc))
        ready.tell(f"error: {exc}")
        print(f"dfs mount: {exc}", file=sys.stderr)
        return 1
    return 0


def mount_background(cluster: ClusterRef, mountpoint: str, subdir: str, read_only: bool,
                     log_file: str | None) -> None:
    """Start a detached mount process; return once it is mounted or raise DfsError."""
    read_end, write_end = os.pipe()
    log_path = Path(log_file) if log_file else Path("/dev/null")
    env = dict(os.environ, DFS_SECRET=cluster.secret.decode())
    command = [sys.executable, "-m", "dfs.mount", "--meta", cluster.meta,
               "--subdir", subdir, "--ready-fd", str(write_end), mountpoint]
    if read_only:
        command.append("--read-only")
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
    parser.add_argument("--subdir", default="/")
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("mountpoint")
    args = parser.parse_args()
    logs.setup(args.log_level)
    cluster = ClusterRef(args.meta, load_secret(None))
    return run_foreground(cluster, args.mountpoint, args.subdir, args.read_only, args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
