"""dfs-chunkserver: serve chunk replicas from a local folder."""

import argparse
import os
import socket
import sys
from pathlib import Path

import trio

from dfs import logs, ops
from dfs.allocator import keep_large_buffers
from dfs.config import (ConfigError, add_log_level_arg, add_secret_file_arg, address_arg,
                        load_secret, write_ready_file, zone_arg)
from dfs.errors import DfsError
from dfs.lockfile import lock_folder
from dfs.metrics import Registry, process_gauges
from dfs.metrics import serve as serve_metrics
from dfs.rpc import Server, parse_addr
from dfs.shutdown import run_until_signalled

from .chunkstore import ChunkStore
from .metalink import MetaLink
from .scrubber import Scrubber
from .service import ChunkService

log = logs.get_logger("chunkserver")

DESCRIPTION = """\
Serve chunk replicas from a local folder to dfs clients, the metaserver and
other chunk servers. Every 64 KiB block carries a CRC32C that is checked on
every read and by a background scrubber; bad replicas are reported to the
metaserver, which repairs them from other replicas.

example:
  dfs-chunkserver --listen 0.0.0.0:9500 --advertise node1:9500 \\
      --meta meta:9400 --data-dir /srv/dfs/chunks --secret-file /etc/dfs/secret
"""


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfs-chunkserver", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, type=address_arg, metavar="HOST:PORT",
                        help="address to accept connections on; port 0 picks a free port "
                             "(see --ready-file)")
    parser.add_argument("--meta", required=True, type=address_arg, metavar="HOST:PORT",
                        help="address of the metaserver to register with")
    parser.add_argument("--data-dir", required=True, type=Path, metavar="DIR",
                        help="folder holding the replicas (created if missing; one chunk "
                             "server per folder)")
    add_secret_file_arg(parser)
    parser.add_argument("--advertise", type=address_arg, metavar="HOST:PORT",
                        help="address clients and the metaserver use to reach this server "
                             "(default: the --listen host with the port actually bound; "
                             "the host name if listening on all interfaces)")
    parser.add_argument("--zone", type=zone_arg, metavar="NAME",
                        help="failure domain this server is in: the copies of a chunk go "
                             "to as many zones as there are before two share one. Give "
                             "every server of one rack (or room) the same name (default, "
                             "or empty: the host of --advertise, so that two servers of one "
                             "host never hold a chunk's only copies while another host has "
                             "room)")
    parser.add_argument("--heartbeat-interval", type=_positive, default=1.0,
                        metavar="SECONDS",
                        help="seconds between heartbeats to the metaserver (default: 1)")
    parser.add_argument("--scrub-rate", type=_non_negative, default=4.0, metavar="MB/s",
                        help="MiB per second the background scrubber may read to verify "
                             "checksums; each replica counts as at least 256 KiB (default: "
                             "4; 0 turns scrubbing off)")
    parser.add_argument("--scrub-every", type=_non_negative, default=24.0, metavar="HOURS",
                        help="verify each replica again once this many hours have passed "
                             "since it last was (recorded in DIR/scrub.state, so a restart "
                             "goes on where it was); replicas new since are verified at once "
                             "(default: 24; 0 reads the store over and over at "
                             "--scrub-rate)")
    parser.add_argument("--metrics-listen", type=address_arg, metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics: requests "
                             "and their latency per operation, bytes read and written, disk "
                             "syncs, capacity, checksum failures (default: not served)")
    parser.add_argument("--ready-file", type=Path, metavar="PATH",
                        help="once listening, write the bound HOST:PORT to this file "
                             "(written whole, via a rename)")
    add_log_level_arg(parser)
    return parser


def _metrics(service: ChunkService, scrubber: Scrubber | None) -> Registry:
    metrics = Registry()
    process_gauges(metrics)
    metrics.gauge("dfs_chunkserver_capacity_bytes", "Size of the filesystem holding the "
                  "replicas.", lambda: service.store.usage()[0])
    metrics.gauge("dfs_chunkserver_used_bytes", "Space used on that filesystem.",
                  lambda: service.store.usage()[1])
    metrics.gauge("dfs_chunkserver_replicas", "Replicas held.", lambda: len(service.versions))
    metrics.counted("dfs_chunkserver_read_bytes_total", "Bytes of replica data read for "
                    "clients and peers.", lambda: service.bytes_read)
    metrics.counted("dfs_chunkserver_written_bytes_total", "Bytes of replica data written.",
                    lambda: service.bytes_written)
    metrics.counted("dfs_chunkserver_damaged_arrivals_total", "Writes and replica pieces "
                    "refused because their data arrived damaged (CRC32C of the sender); "
                    "a rising count points at a network card, cable or host's memory.",
                    lambda: service.damaged_arrivals)
    metrics.counted("dfs_chunkserver_checksum_failures_total", "Reads that found a block "
                    "failing its CRC32C.", lambda: service.checksum_failures)
    metrics.add(service.sync_seconds)
    if scrubber is not None:
        metrics.counted("dfs_chunkserver_scrubbed_replicas_total", "Replicas the scrubber "
                        "read whole and found sound.", lambda: scrubber.verified_replicas)
    return metrics


def _advertised(host: str, port: int) -> str:
    """The address to give out when --advertise is not set: a wildcard
    listen address means nothing to peers, the host name does."""
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


async def serve(args: argparse.Namespace, secret: bytes) -> None:
    store = ChunkStore(args.data_dir)
    versions = await trio.to_thread.run_sync(store.scan)
    log.info("replicas found", data_dir=str(args.data_dir), chunks=len(versions),
             crcs_synced_by_data_flush=store.in_place)
    service = ChunkService(store, versions, secret)
    scrubber = (Scrubber(service, args.scrub_rate, args.scrub_every * 3600, args.data_dir)
                if args.scrub_rate > 0 else None)
    metrics = _metrics(service, scrubber)
    server = Server("chunkserver", ops.CHUNK, service.handlers, secret,
                    in_hand=service.in_hand, metrics=metrics)
    host, port = parse_addr(args.listen)

    async def start(nursery: trio.Nursery) -> None:
        _, bound_port = await nursery.start(server.serve, host, port)
        listen = f"{host}:{bound_port}"
        advertise = args.advertise or _advertised(host, bound_port)
        log.info("listening", addr=listen, advertise=advertise, meta=args.meta)
        if args.metrics_listen:
            bound = await nursery.start(serve_metrics, metrics,
                                        *parse_addr(args.metrics_listen))
            log.info("serving metrics", addr="%s:%d" % bound)
        if args.ready_file:
            write_ready_file(args.ready_file, listen)
        link = MetaLink(service, args.meta, secret, advertise, args.data_dir,
                        args.heartbeat_interval, args.zone)
        nursery.start_soon(link.run)
        if scrubber is not None:
            nursery.start_soon(scrubber.run)

    try:
        await run_until_signalled(log, start)
    finally:
        await service.aclose()


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        secret = load_secret(args.secret_file)
        # Two chunk servers on one folder would corrupt each other's replicas.
        lock_fd = lock_folder(args.data_dir, "lock", "chunk server")
    except (ConfigError, DfsError, OSError) as exc:
        print(f"dfs-chunkserver: {exc}", file=sys.stderr)
        return 2
    keep_large_buffers()
    failures = []
    try:
        trio.run(serve, args, secret)
    except* OSError as group:
        failures = _leaves(group)
    finally:
        os.close(lock_fd)
    for error in failures:
        print(f"dfs-chunkserver: {error}", file=sys.stderr)
    if failures:
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
