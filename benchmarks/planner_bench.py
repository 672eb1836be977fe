"""Micro-benchmark of the metaserver's re-replication round over its chunk table.

Every second the metaserver reads its whole chunk table to find the chunks
short of copies, those with copies too many, and those to move to balance the
disks (metaserver/cluster.py). This builds a real LMDB database of --chunks
chunks, each with two replicas spread over three live chunk servers (in
--zones zones, each chunk's copies in two of them if there are two), and times
rounds that find nothing to do: what every cluster pays each second. It
reports the median time of a round and its time per chunk.
"""

import argparse
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from metaserver.chunkpool import ChunkPool
from metaserver.cluster import Cluster
from metaserver.context import Context, Settings
from metaserver.records import Chunk
from metaserver.replicas import Replicas
from metaserver.store import Store

SERVERS = 3
# Chunks written to the database per transaction while it is built.
FILL_BATCH = 10_000
DISK = 1 << 40


def _zone(csid: int, zones: int) -> str:
    return f"zone{(csid - 1) * zones // SERVERS}"


def _fill(store: Store, chunks: int, zones: int) -> None:
    rng = random.Random(1)
    pairs = [pair for pair in itertools.combinations(range(1, SERVERS + 1), 2)
             if zones == 1 or _zone(pair[0], zones) != _zone(pair[1], zones)]
    for first in range(1, chunks + 1, FILL_BATCH):
        def put(tx, first=first):
            for chunk_id in range(first, min(first + FILL_BATCH, chunks + 1)):
                tx.put_chunk(chunk_id, Chunk(1, list(rng.choice(pairs))))
        store.write_now(put)


def benchmark(chunks: int, rounds: int, zones: int = 1) -> dict:
    with tempfile.TemporaryDirectory(prefix="dfs-planner-bench-") as folder:
        store = Store(Path(folder), map_size=8 << 30)
        try:
            _fill(store, chunks, zones)
            ctx = Context.create(Settings(64 << 20, 2, 3600.0, 60.0, 60.0), store, b"x" * 32)
            replicas = Replicas(ctx)
            cluster = Cluster(ctx, replicas, ChunkPool(ctx, replicas))
            cluster.load()
            for csid in range(1, SERVERS + 1):
                ctx.registry.known(csid, f"127.0.0.1:{9500 + csid}", False, _zone(csid, zones))
                ctx.registry.heard(csid, f"127.0.0.1:{9500 + csid}", DISK, DISK // 2)
            times = trio.run(_rounds, cluster, rounds)
        finally:
            store.env.close()
    median = statistics.median(times)
    return {"chunks": chunks, "zones": zones, "rounds": rounds, "round_ms": median * 1e3,
            "per_chunk_us": median / chunks * 1e6, "under_replicated": cluster.under_replicated,
            "misplaced": cluster.misplaced}


async def _rounds(cluster: Cluster, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await cluster.replicate()
        times.append(time.perf_counter() - started)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.planner_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=200_000,
                        help="chunks in the table (default 200000)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds timed; the median is reported (default 5)")
    parser.add_argument("--zones", type=int, choices=range(1, SERVERS + 1), default=1,
                        help="zones the three servers are in (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.chunks < 1 or args.rounds < 1:
        parser.error("--chunks and --rounds must be positive")
    print(f"building a table of {args.chunks} chunks...", file=sys.stderr)
    result = benchmark(args.chunks, args.rounds, args.zones)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['chunks']} chunks in {result['zones']} zone(s): "
              f"{result['round_ms']:.1f} ms a round, {result['per_chunk_us']:.2f} us a chunk "
              f"(median of {result['rounds']})")


if __name__ == "__main__":
    main()
