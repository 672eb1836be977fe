"""dfs-metaserver: the metadata service of a dfs cluster."""

import argparse
import sys
from pathlib import Path

import trio

from dfs import logs
from dfs.config import (ConfigError, add_log_level_arg, add_secret_file_arg, address_arg,
                        load_secret, write_ready_file)
from dfs.errors import DfsError
from dfs.metrics import serve as serve_metrics
from dfs.ops import META, META_CS
from dfs.rpc import Server, parse_addr
from dfs.shutdown import run_until_signalled

from .backups import Backups
from .changelog import ChangeLog
from .context import Context, Settings
from .gauges import registry_for
from .service import MetaService
from .store import Store

log = logs.get_logger("metaserver")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dfs-metaserver",
        description="Serve the namespace, chunk maps, quotas and sessions of a dfs cluster "
                    "from an LMDB database. Clients (FUSE mounts, the dfs command, the CSI "
                    "plugin) and chunk servers connect to --listen with the cluster secret.",
        epilog="example: dfs-metaserver --listen 0.0.0.0:7000 --data-dir /var/lib/dfs/meta "
               "--secret-file /etc/dfs/secret")
    parser.add_argument("--listen", required=True, type=address_arg, metavar="HOST:PORT",
                        help="address to serve on; port 0 picks a free port (see --ready-file)")
    parser.add_argument("--data-dir", required=True, type=Path, metavar="DIR",
                        help="folder for the metadata database (DIR/meta.lmdb); created if "
                             "missing, reopened with everything intact on restart")
    add_secret_file_arg(parser)
    parser.add_argument("--chunk-size", type=int, default=64 << 20, metavar="BYTES",
                        help="size of a file chunk, fixed for the life of the cluster "
                             "(default: 64 MiB)")
    parser.add_argument("--replicas", type=int, default=2, metavar="R",
                        help="how many chunk servers hold each chunk of a file that has no "
                             "replication factor of its own (see `dfs replicas`; default: 2)")
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="a chunk server not heard from for this long is dead: no reads "
                             "or new chunks go to it and its chunks are re-replicated "
                             "(default: 10)")
    parser.add_argument("--session-ttl", type=float, default=60.0, metavar="SECONDS",
                        help="a client session not renewed for this long expires; its open "
                             "files are released (default: 60)")
    parser.add_argument("--lease-seconds", type=float, default=60.0, metavar="SECONDS",
                        help="how long a write grant on a chunk lasts; while it does, more "
                             "grants keep the chunk's version, after it the next grant moves "
                             "every replica to a new version (default: 60)")
    parser.add_argument("--backup-dir", type=Path, metavar="DIR",
                        help="folder for backups of the metadata, best on another disk than "
                             "--data-dir (default: DATA_DIR/backups); see `dfs backup` and "
                             "dfs-metaserver-restore")
    parser.add_argument("--backup-interval", type=float, default=3600.0, metavar="SECONDS",
                        help="take a backup of the metadata this often while serving; 0 "
                             "takes none unless asked (`dfs backup now`) (default: 3600)")
    parser.add_argument("--backup-keep", type=int, default=24, metavar="N",
                        help="how many backups to keep; older ones are removed (default: 24)")
    parser.add_argument("--log-keep-mib", type=float, default=32.0, metavar="MIB",
                        help="while metaloggers (dfs-metalogger) follow this metaserver, keep "
                             "records of its newest commits, up to this much, in its database "
                             "for them to read, across restarts too; one that falls further "
                             "behind copies the whole database again (default: 32)")
    parser.add_argument("--trash-hours", type=float, default=0.0, metavar="HOURS",
                        help="keep files that lose their last name (rm, or a rename over "
                             "them) in /.trash this long before deleting them, so 'dfs trash "
                             "restore' can bring them back; 0 deletes them at once "
                             "(default: 0)")
    parser.add_argument("--metrics-listen", type=address_arg, metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics: requests "
                             "and their latency per operation, inodes, chunks, sessions, "
                             "chunk servers, replication health, backups, metaloggers and "
                             "quota usage "
                             "(default: not served)")
    parser.add_argument("--ready-file", type=Path, metavar="PATH",
                        help="once listening, write the actual HOST:PORT here (atomically), "
                             "for launchers that pass port 0")
    add_log_level_arg(parser)
    args = parser.parse_args(argv)
    if args.chunk_size < 4096 or args.chunk_size % 4096:
        parser.error("--chunk-size must be a positive multiple of 4096")
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    if min(args.heartbeat_timeout, args.session_ttl, args.lease_seconds) <= 0:
        parser.error("--heartbeat-timeout, --session-ttl and --lease-seconds must be positive")
    if args.log_keep_mib <= 0:
        parser.error("--log-keep-mib must be positive")
    if args.trash_hours < 0:
        parser.error("--trash-hours must not be negative")
    if args.backup_interval < 0 or args.backup_keep < 1:
        parser.error("--backup-interval must not be negative and --backup-keep must be at "
                     "least 1")
    return args


async def serve(args: argparse.Namespace, secret: bytes, store: Store) -> None:
    settings = Settings(args.chunk_size, args.replicas, args.heartbeat_timeout,
                        args.session_ttl, args.lease_seconds, args.trash_hours * 3600)
    ctx = Context.create(settings, store, secret)
    backups = Backups(store, args.backup_dir or args.data_dir / "backups", args.backup_keep,
                      args.backup_interval)
    changelog = ChangeLog(store, int(args.log_keep_mib * (1 << 20)), args.data_dir / "copies")
    service = MetaService(ctx, backups, changelog)
    service.start()
    metrics = registry_for(service)
    server = Server("metaserver", {**META, **META_CS}, service.handlers(), secret,
                    metrics=metrics)
    host, port = parse_addr(args.listen)

    async def start(nursery: trio.Nursery) -> None:
        bound = await nursery.start(server.serve, host, port)
        addr = "%s:%d" % (bound[0], bound[1])
        if args.metrics_listen:
            bound = await nursery.start(serve_metrics, metrics, *parse_addr(args.metrics_listen))
            log.info("serving metrics", addr="%s:%d" % bound)
        if args.ready_file:
            write_ready_file(args.ready_file, addr)
        log.info("serving", addr=addr, data_dir=str(args.data_dir),
                 chunk_size=settings.chunk_size, replicas=settings.replicas)
        nursery.start_soon(service.run_background)

    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(store.run_writer)
            await run_until_signalled(log, start)
            # Serving has stopped; let the writer finish what is queued, then stop.
            store.stop()
    finally:
        await ctx.chunkservers.aclose()
        store.close()
    log.info("stopped")


def main(argv=None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level)
    try:
        secret = load_secret(args.secret_file)
    except ConfigError as exc:
        print(f"dfs-metaserver: {exc}", file=sys.stderr)
        return 2
    try:
        store = Store(args.data_dir)
    except DfsError as exc:
        print(f"dfs-metaserver: {exc}", file=sys.stderr)
        return 1
    trio.run(serve, args, secret, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
