"""Prometheus metrics: the text format dfs.metrics writes, and the /metrics
endpoints of a real metaserver and chunk server, under good and bad requests."""

import errno
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import trio

from dfs.metrics import Registry
from test_metaserver_support import REPO, ROOT, error_of, make_dir, meta, meta_factory

pytestmark = pytest.mark.timeout(90)
__all__ = ["meta", "meta_factory"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """Every sample of http://127.0.0.1:PORT/metrics, by its name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def test_the_text_format_is_prometheus_s():
    registry = Registry()
    requests = registry.counter("t_requests_total", "Requests.", ("op", "result"))
    requests.inc("read", "ok")
    requests.inc("read", "ok", amount=2)
    requests.inc('we"ird\n', "ENOENT")
    registry.gauge("t_depth", "Depth.", lambda: 1.5)
    registry.gauge("t_absent", "Nothing to say.", lambda: None)
    latency = registry.histogram("t_seconds", "Latency.", ("op",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        latency.observe(value, "read")
    assert registry.render() == (
        "# HELP t_requests_total Requests.\n"
        "# TYPE t_requests_total counter\n"
        't_requests_total{op="read",result="ok"} 3\n'
        't_requests_total{op="we\\"ird\\n",result="ENOENT"} 1\n'
        "# HELP t_depth Depth.\n"
        "# TYPE t_depth gauge\n"
        "t_depth 1.5\n"
        "# HELP t_absent Nothing to say.\n"
        "# TYPE t_absent gauge\n"
        "# HELP t_seconds Latency.\n"
        "# TYPE t_seconds histogram\n"
        't_seconds_bucket{op="read",le="0.1"} 2\n'
        't_seconds_bucket{op="read",le="1"} 3\n'
        't_seconds_bucket{op="read",le="+Inf"} 4\n'
        't_seconds_sum{op="read"} 7.65\n'
        't_seconds_count{op="read"} 4\n')
    with pytest.raises(ValueError):
        registry.gauge("t_depth", "Again.", lambda: 2)


def test_the_metaserver_counts_requests_and_reports_its_state(meta_factory):
    port = free_port()
    meta = meta_factory(metrics_listen=f"127.0.0.1:{port}")
    meta.start_chunkserver("cs1")

    async def body(c):
        while (await c.call("status"))["chunkservers"] == []:
            await trio.sleep(0.1)
        volume = (await make_dir(c, ROOT, b"volume"))["ino"]
        for name in (b"a", b"b"):
            await make_dir(c, volume, name)
        await c.call("quota_set", ino=volume, bytes=1 << 30, inodes=100)
        missing = await error_of(c.call("lookup", parent=ROOT, name=b"missing"))
        await c.call("backup_take")
        copy = await c.call("log_copy", follower="logger-1")
        await c.call("log_read", follower="logger-1", history=copy["history"], after=copy["seq"],
                     part=0, wait=0.0)
        await make_dir(c, ROOT, b"after-the-copy")
        return missing

    assert meta.run(body) == errno.ENOENT
    samples = scrape(port)
    assert samples['dfs_rpc_requests_total{op="mkdir",result="ok"}'] == 4
    assert samples['dfs_rpc_requests_total{op="lookup",result="ENOENT"}'] == 1
    assert samples['dfs_rpc_request_seconds_count{op="mkdir"}'] == 4
    buckets = [v for k, v in samples.items()
               if k.startswith('dfs_rpc_request_seconds_bucket{op="mkdir"')]
    assert buckets == sorted(buckets) and buckets[-1] == 4
    assert samples['dfs_rpc_received_bytes_total{op="mkdir"}'] > 0
    # A long poll is counted, and its wait is no latency.
    assert samples['dfs_rpc_requests_total{op="log_read",result="ok"}'] == 1
    assert not any(k.startswith('dfs_rpc_request_seconds_count{op="log_read"')
                   for k in samples)
    assert samples["dfs_meta_inodes"] == 5
    assert samples['dfs_meta_chunkservers{state="alive"}'] == 1
    assert samples['dfs_quota_inodes_used{path="/volume"}'] == 2   # a and b
    assert samples['dfs_quota_bytes_limit{path="/volume"}'] == 1 << 30
    assert 0 <= samples["dfs_meta_backup_age_seconds"] < 60
    assert samples["dfs_meta_backup_failing"] == 0
    assert samples['dfs_meta_metalogger_behind_commits{name="logger-1"}'] >= 1
    assert 0 <= samples['dfs_meta_metalogger_seen_seconds{name="logger-1"}'] < 60
    assert samples["process_resident_memory_bytes"] > 1 << 20
    assert samples["dfs_meta_commits_total"] >= 4


def test_the_chunk_server_counts_bytes_and_syncs(meta):
    port = free_port()
    addr = meta.start_chunkserver("cs1", "--metrics-listen", f"127.0.0.1:{port}")

    async def body():
        c = meta.chunk_client(addr)
        try:
            await c.call("create", chunk=7, version=1)
            await c.call("write", chunk=7, version=1, offset=0, data=b"x" * 10000, sync=True)
            return len((await c.call("read", chunk=7, version=1, offset=0,
                                     length=4096))["data"])
        finally:
            await c.aclose()

    assert trio.run(body) == 4096
    samples = scrape(port)
    assert samples["dfs_chunkserver_written_bytes_total"] == 10000
    assert samples["dfs_chunkserver_read_bytes_total"] == 4096
    assert samples["dfs_chunkserver_replicas"] == 1
    assert samples["dfs_chunkserver_sync_seconds_count"] >= 1
    assert samples['dfs_rpc_requests_total{op="write",result="ok"}'] == 1
    assert samples['dfs_rpc_received_bytes_total{op="write"}'] > 10000
    assert samples["dfs_chunkserver_capacity_bytes"] >= samples["dfs_chunkserver_used_bytes"] > 0


def test_bad_http_requests_get_errors_and_scrapes_go_on(meta_factory):
    port = free_port()
    meta_factory(metrics_listen=f"127.0.0.1:{port}")
    with pytest.raises(urllib.error.HTTPError) as wrong_path:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert wrong_path.value.code == 404
    assert raw_request(port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert raw_request(port, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw_request(port, huge).startswith(b"HTTP/1.1 431")
    head = raw_request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")

    # A client that says nothing is dropped in time, and others are served meanwhile.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(b"GET /metr")
        started = time.monotonic()
        assert "process_cpu_seconds_total" in scrape(port)
        assert stalled.recv(100).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 9


def test_a_bad_metrics_address_is_refused_at_start(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "metaserver.main", "--listen", "127.0.0.1:0", "--data-dir",
         str(tmp_path), "--metrics-listen", "nowhere"],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "--metrics-listen" in run.stderr


def test_a_mount_counts_the_kernel_s_requests_and_bytes(shared_cluster, mnt):
    port = free_port()
    path = shared_cluster.mount(f"/{mnt.name}", "--metrics-listen", f"127.0.0.1:{port}")
    try:
        data = os.urandom(300_000)
        (path / "file").write_bytes(data)
        os.sync()
        fd = os.open(path / "file", os.O_RDONLY | os.O_DIRECT)
        try:
            read = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        assert read == data
        assert not (path / "missing").exists()
        samples = scrape(port)
    finally:
        shared_cluster.unmount(path)
    assert samples['dfs_fuse_requests_total{op="create",result="ok"}'] == 1
    assert samples['dfs_fuse_requests_total{op="lookup",result="ENOENT"}'] >= 2
    assert samples['dfs_fuse_request_seconds_count{op="write"}'] >= 1
    # A close's flush syncs through the fsync handler, yet is one request.
    assert samples['dfs_fuse_requests_total{op="flush",result="ok"}'] >= 1
    assert not any(name.startswith('dfs_fuse_requests_total{op="fsync"') for name in samples)
    assert samples["dfs_fuse_written_bytes_total"] == len(data)
    assert samples["dfs_fuse_read_bytes_total"] >= len(data)
