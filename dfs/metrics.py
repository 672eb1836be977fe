"""Metrics for Prometheus: counters, gauges and histograms held in memory, and
a small HTTP endpoint that serves them at /metrics in Prometheus's text
format (version 0.0.4).

A server process keeps one `Registry`. Counters and histograms are updated
where things happen (the RPC layer counts every request); gauges are read
when scraped, from a function, so nothing is computed between scrapes. The
endpoint only answers `GET /metrics`; anything else gets an HTTP error and
a malformed or stalled client is dropped, the server serving on.
"""

import bisect
import math
import os
import time
from collections.abc import Callable

import trio

from . import logs

log = logs.get_logger("metrics")

# Seconds: from a cached metadata read to a slow disk flush.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple, values: tuple, extra: str = "") -> str:
    pairs = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple = ()):
        self.name = name
        self.help = help
        self.labelnames = tuple(labels)

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple = ()):
        super().__init__(name, help, labels)
        self.values: dict[tuple, float] = {}

    def inc(self, *labels, amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def samples(self) -> list[str]:
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}"
                for k, v in sorted(self.values.items())]


class Gauge(Metric):
    """A value read when scraped: `read()` returns a number, or a map from
    label values (tuples) to numbers, or None for no sample. With kind
    "counter" it reads a count kept elsewhere, which only goes up."""

    def __init__(self, name: str, help: str, read: Callable, labels: tuple = (),
                 kind: str = "gauge"):
        super().__init__(name, help, labels)
        self.read = read
        self.kind = kind

    def samples(self) -> list[str]:
        value = self.read()
        if value is None:
            return []
        if not isinstance(value, dict):
            value = {(): value}
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}"
                for k, v in sorted(value.items())]


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple = (),
                 buckets: tuple = LATENCY_BUCKETS):
        super().__init__(name, help, labels)
        self.bounds = tuple(buckets)
        # Per label values: [count per bucket (the last one is +Inf), sum].
        self.series: dict[tuple, list] = {}

    def observe(self, value: float, *labels) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [[0] * (len(self.bounds) + 1), 0.0]
        series[0][bisect.bisect_left(self.bounds, value)] += 1
        series[1] += value

    def samples(self) -> list[str]:
        lines = []
        for key, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip(self.bounds + (math.inf,), counts):
                cumulative += count
                le = 'le="%s"' % _number(bound)
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {cumulative}")
        return lines


class Registry:
    def __init__(self):
        self.metrics: dict[str, Metric] = {}

    def add(self, metric: Metric) -> Metric:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} is defined twice")
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: tuple = ()) -> Counter:
        return self.add(Counter(name, help, labels))

    def gauge(self, name: str, help: str, read: Callable, labels: tuple = ()) -> Gauge:
        return self.add(Gauge(name, help, read, labels))

    def counted(self, name: str, help: str, read: Callable, labels: tuple = ()) -> Gauge:
        """A counter whose count is kept elsewhere and read when scraped."""
        return self.add(Gauge(name, help, read, labels, kind="counter"))

    def histogram(self, name: str, help: str, labels: tuple = (),
                  buckets: tuple = LATENCY_BUCKETS) -> Histogram:
        return self.add(Histogram(name, help, labels, buckets))

    def render(self) -> str:
        parts = []
        for metric in self.metrics.values():
            try:
                parts.append(metric.render())
            except Exception as exc:   # one broken gauge must not hide the others
                log.warning("metric not rendered", metric=metric.name, error=str(exc))
        return "".join(parts)


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8"
              ) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def answer(registry: Registry, request: bytes) -> bytes:
    """The HTTP response to `request` (its head, up to the blank line)."""
    line = request.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _response("400 Bad Request", b"not an HTTP/1 request\n")
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"only GET /metrics\n")
    if target.split("?", 1)[0] != "/metrics":
        return _response("404 Not Found", b"metrics are at /metrics\n")
    response = _response("200 OK", registry.render().encode(),
                         "text/plain; version=0.0.4; charset=utf-8")
    return response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" if method == "HEAD" else response


async def _connection(registry: Registry, stream: trio.SocketStream) -> None:
    async with stream:
        request = b""
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                while b"\r\n\r\n" not in request and len(request) <= MAX_REQUEST:
                    data = await stream.receive_some(MAX_REQUEST)
                    if not data:
                        return
                    request += data
            if b"\r\n\r\n" not in request:
                reply = (_response("431 Request Header Fields Too Large", b"")
                         if len(request) > MAX_REQUEST else _response("408 Request Timeout", b""))
            else:
                reply = answer(registry, request)
            await stream.send_all(reply)
            # Closing with the client's bytes unread would reset the
            # connection and could drop the reply before it is read.
            await stream.send_eof()
            with trio.move_on_after(1.0):
                while len(request) < 16 * MAX_REQUEST and (data := await stream.receive_some()):
                    request += data
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def serve(registry: Registry, host: str, port: int, *,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `registry` at http://HOST:PORT/metrics until cancelled."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[:2])
    await trio.serve_listeners(lambda stream: _connection(registry, stream), listeners)


async def serve_unix(registry: Registry, path: str, *,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `registry` the same way on a unix socket at `path` (readable by
    its owner only), for a local collector; the socket is removed at the end."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        os.unlink(path)   # one left by a process that died
    except FileNotFoundError:
        pass
    await sock.bind(path)
    try:
        os.chmod(path, 0o600)
        sock.listen()
        task_status.started(path)
        await trio.serve_listeners(lambda stream: _connection(registry, stream),
                                   [trio.SocketListener(sock)])
    finally:
        sock.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def process_gauges(registry: Registry) -> None:
    """What every process reports about itself, under Prometheus's usual names."""
    started = time.time()
    registry.gauge("process_start_time_seconds", "When this process started (unix time).",
                   lambda: started)
    registry.counted("process_cpu_seconds_total", "CPU time this process has used.",
                     time.process_time)
    registry.gauge("process_resident_memory_bytes", "Memory this process has resident.",
                   _resident_bytes)
