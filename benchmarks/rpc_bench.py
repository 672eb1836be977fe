"""Micro-benchmark of the RPC layer alone (dfs.rpc over loopback TCP).

A dfs.rpc.Server with trivial handlers runs in a child process, so the client
and the server each have their own interpreter as in a real cluster; one
dfs.rpc.Client (one connection, as a mount has per server) calls it. Each case
runs for --duration seconds after a short warm-up, with 1 request in flight
(sequential) and with --inflight requests in flight, and reports round trips
per second, p50/p99 latency and the CPU time each side spends per round trip.
The CPU figures are the steadier ones on a shared machine.

Cases: `tiny` (an empty request and reply), `read-N` (a small request, an
N-byte reply, like a chunk server read), `write-N` (an N-byte request, a small
reply, like a chunk server write), for N in 4 KiB and 1 MiB.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import trio

from dfs.metrics import Registry
from dfs.ops import Op
from dfs.rpc import Client, Server

SECRET = b"rpc-bench-secret-rpc-bench-secret"
SCHEMA = {op.name: op for op in (
    Op("ping", {}, idempotent=True),
    Op("read", {"length": int}, idempotent=True),
    Op("write", {"data": bytes}, idempotent=True),
)}
SIZES = {"4k": 4096, "1m": 1024 * 1024}
CASES = ["tiny"] + [f"{kind}-{size}" for size in SIZES for kind in ("read", "write")]
WARMUP = 0.2


def _handlers() -> dict:
    replies = {n: {"data": os.urandom(n)} for n in SIZES.values()}

    async def ping():
        return {}

    async def read(length):
        return replies.get(length) or {"data": bytes(length)}

    async def write(data):
        return {}

    return {"ping": ping, "read": read, "write": write}


def serve() -> None:
    """Child process: serve on a free loopback port and print it on stdout."""
    async def main():
        # Counting every request, as the metaserver and chunk servers do.
        server = Server("rpc-bench", SCHEMA, _handlers(), SECRET, metrics=Registry())
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)
            print(port, flush=True)

    trio.run(main)


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


async def _measure(client: Client, case: str, inflight: int, duration: float,
                   server_pid: int) -> dict:
    if case == "tiny":
        op, args = "ping", {}
    else:
        kind, size = case.split("-")
        op = kind
        args = {"length": SIZES[size]} if kind == "read" else {"data": os.urandom(SIZES[size])}
    latencies: list[float] = []
    recording = False
    stop_at = trio.current_time() + WARMUP + duration

    async def worker():
        clock = time.perf_counter
        while trio.current_time() < stop_at:
            start = clock()
            await client.call(op, **args)
            if recording:
                latencies.append(clock() - start)

    async with trio.open_nursery() as nursery:
        for _ in range(inflight):
            nursery.start_soon(worker)
        await trio.sleep(WARMUP)
        recording = True
        wall, own, theirs = time.perf_counter(), _own_cpu(), _cpu_of(server_pid)
    wall, own, theirs = (time.perf_counter() - wall, _own_cpu() - own,
                         _cpu_of(server_pid) - theirs)
    latencies.sort()
    calls = len(latencies)
    return {"case": case, "inflight": inflight, "calls": calls,
            "calls_per_s": calls / wall,
            "mib_per_s": calls * SIZES.get(case.split("-")[-1], 0) / wall / 2**20,
            "p50_us": _percentile(latencies, 0.50) * 1e6,
            "p99_us": _percentile(latencies, 0.99) * 1e6,
            "client_cpu_us": own / calls * 1e6,
            "server_cpu_us": theirs / calls * 1e6}


async def _run(server_pid: int, port: int, cases: list[str], inflights: list[int],
               duration: float, rounds: int, say) -> list[dict]:
    client = Client(f"127.0.0.1:{port}", SECRET, SCHEMA)
    results = []
    try:
        for _ in range(rounds):
            for case in cases:
                for inflight in inflights:
                    result = await _measure(client, case, inflight, duration, server_pid)
                    say(result)
                    results.append(result)
    finally:
        await client.aclose()
    return results


def _median_by_case(results: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault((result["case"], result["inflight"]), []).append(result)
    summary = []
    for (case, inflight), rows in groups.items():
        row = {"case": case, "inflight": inflight, "rounds": len(rows)}
        for key in rows[0]:
            if key.endswith(("_s", "_us")):
                values = sorted(r[key] for r in rows)
                row[key] = values[len(values) // 2]
        summary.append(row)
    return summary


def _line(row: dict) -> str:
    return (f"{row['case']:>9} x{row['inflight']:<3} {row['calls_per_s']:9.0f} calls/s "
            f"{row['mib_per_s']:8.1f} MiB/s  p50 {row['p50_us']:8.1f} us  "
            f"p99 {row['p99_us']:8.1f} us  cpu/call client {row['client_cpu_us']:7.1f} us "
            f"server {row['server_cpu_us']:7.1f} us")


def benchmark(cases: list[str], inflights: list[int], duration: float, rounds: int = 1,
              say=lambda row: None) -> list[dict]:
    """Start a server process, run the cases against it, return the median
    figures of each (case, in-flight) pair over `rounds`."""
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.rpc_bench", "--serve"],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        return _median_by_case(trio.run(_run, server.pid, port, cases, inflights,
                                        duration, rounds, say))
    finally:
        server.terminate()
        server.wait(timeout=10)


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rpc_bench",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases to run (default: all of {','.join(CASES)})")
    parser.add_argument("--inflight", default="1,16",
                        help="comma-separated numbers of requests kept in flight on the "
                             "one connection (default: 1,16)")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds measured per case and in-flight count (default: 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every case this many times, interleaved, and report "
                             "the median of each figure (default: 1)")
    parser.add_argument("--json", action="store_true",
                        help="print the figures as one JSON list instead of a table")
    parser.add_argument("--serve", action="store_true",
                        help="internal: be the server process (prints its port, serves "
                             "until killed)")
    args = parser.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {CASES}")
    args.inflight = [int(n) for n in args.inflight.split(",") if n]
    if not args.inflight or min(args.inflight) < 1:
        parser.error("--inflight needs positive numbers")
    if args.duration <= 0 or args.rounds < 1:
        parser.error("--duration and --rounds must be positive")
    return args


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.serve:
        serve()
        return
    progress = (lambda row: print(_line(row), file=sys.stderr)) if args.rounds > 1 else None
    summary = benchmark(args.cases, args.inflight, args.duration, args.rounds,
                        say=progress or (lambda row: None))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        if args.rounds > 1:
            print(f"median of {args.rounds} rounds:")
        for row in summary:
            print(_line(row))


if __name__ == "__main__":
    main()
