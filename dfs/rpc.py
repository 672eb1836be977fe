"""Authenticated request/reply RPC over framed msgpack, on trio.

One connection carries many requests at once: each has an id and its reply may
come back in any order. The server runs every request as its own task and
answers errors as errno values, so one bad request never disturbs the others;
a peer that breaks the framing or fails the handshake loses its connection and
nothing else.
"""

import errno
import itertools
import socket
import time
from collections import Counter
from contextvars import ContextVar
from typing import Awaitable, Callable

import trio

from . import logs
from .auth import HANDSHAKE_TIMEOUT, client_handshake, server_handshake
from .errors import DfsError, ProtocolError
from .framing import MAX_FRAME, REPLY, REQUEST, FramedStream
from .metrics import Registry
from .ops import Op, check_fields

log = logs.get_logger("rpc")

# The address a request being handled came from (the host, without the
# port); a handler reads it with peer_host().
_peer_host: ContextVar[str] = ContextVar("peer_host", default="")


def peer_host() -> str:
    """The host of the peer whose request this task is handling ("" if unknown)."""
    return _peer_host.get()

Handler = Callable[[dict], Awaitable[object]]

# How many requests, and how many bytes of them, one connection may have
# running on the server at once; beyond either the server stops reading,
# which pushes back on the sender. The bytes bound a server's memory per
# connection (a mount keeps at most 16 batches of MAX_DATA in flight).
MAX_IN_FLIGHT = 256
MAX_BYTES_IN_FLIGHT = 16 * MAX_FRAME


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address must be HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


# A peer cut off by the network sends no reset: without these a call waits
# on the dead connection for the kernel's ~15 minutes of retransmissions.
# With them the connection breaks (ECONNRESET, retried on a new connection)
# after KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT idle seconds, or
# USER_TIMEOUT_MS with data unacknowledged.
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 30_000


def _tune(stream: trio.SocketStream) -> None:
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        stream.socket.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in ((socket.TCP_KEEPIDLE, KEEPALIVE_IDLE),
                       (socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL),
                       (socket.TCP_KEEPCNT, KEEPALIVE_COUNT),
                       (socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)):
        stream.socket.setsockopt(socket.IPPROTO_TCP, opt, value)


class Server:
    """Serves `handlers` (op name -> async fn(args)) for the operations in `schema`."""

    def __init__(self, name: str, schema: dict[str, Op], handlers: dict[str, Handler],
                 secret: bytes, in_hand: Counter | None = None,
                 metrics: Registry | None = None):
        missing = set(schema) - set(handlers)
        if missing:
            raise ValueError(f"no handler for {sorted(missing)}")
        self.name = name
        self.schema = schema
        self.handlers = handlers
        self.secret = secret
        self.listeners: list = []
        # Requests received and not answered yet, by operation name, counted
        # from the moment they are read: handlers may look at what is coming.
        self.in_hand = Counter() if in_hand is None else in_hand
        self.stats = _Stats(metrics, self) if metrics is not None else None

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.listeners = listeners
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        _tune(stream)
        framed = FramedStream(stream)
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            host, peer = "", "?"
        # Inherited by the tasks that handle this connection's requests.
        _peer_host.set(host)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await server_handshake(framed, self.secret)
        except EOFError:
            # A port probe (load balancer, kubelet tcpSocket) connects and leaves.
            log.debug("connection closed before the handshake", server=self.name, peer=peer)
            await framed.aclose()
            return
        except (DfsError, ProtocolError, trio.TooSlowError,
                trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.warning("connection refused", server=self.name, peer=peer, reason=str(exc))
            await framed.aclose()
            return
        try:
            async with trio.open_nursery() as nursery:
                await self._receive_requests(framed, nursery, peer)
        finally:
            await framed.aclose()

    async def _receive_requests(self, framed: FramedStream, nursery: trio.Nursery,
                                peer: str) -> None:
        """Start a task per request until the peer leaves or breaks the protocol.
        Errors are handled here, inside the nursery, so that they end this
        connection and never the server."""
        running = _Running()
        try:
            while True:
                message = await framed.receive()
                size = framed.last_size
                await running.admit(size)
                op = (message[2] if isinstance(message, list) and len(message) == 4
                      and isinstance(message[2], str) and message[2] in self.schema
                      else None)
                self.in_hand[op] += 1
                nursery.start_soon(self._request, framed, message, running, size, op)
        except EOFError:
            pass
        except ProtocolError as exc:
            log.warning("closing connection", server=self.name, peer=peer, reason=str(exc))
            await framed.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _request(self, framed: FramedStream, message, running: "_Running",
                       size: int, op: str | None) -> None:
        started = time.perf_counter()
        outcome = 0
        try:
            if (not isinstance(message, list) or len(message) != 4 or message[0] != REQUEST
                    or not isinstance(message[1], int)):
                raise ProtocolError("not a request")
            _, request_id, op_name, args = message
            try:
                result = await self._dispatch(op_name, args)
            except DfsError as exc:
                outcome = exc.errno
                await framed.send([REPLY, request_id, exc.errno, exc.message])
                return
            try:
                await framed.send_reply(request_id, result)
            except ProtocolError as exc:
                outcome = errno.EFBIG
                await framed.send([REPLY, request_id, errno.EFBIG, str(exc)])
        except ProtocolError as exc:
            outcome = errno.EPROTO
            log.warning("malformed request", server=self.name, reason=str(exc))
            await framed.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            outcome = errno.ECONNRESET
        finally:
            running.release(size)
            self.in_hand[op] -= 1
            if self.stats is not None:
                waits = op in self.schema and self.schema[op].waits
                self.stats.record(op, outcome, size,
                                  None if waits else time.perf_counter() - started)

    async def _dispatch(self, op_name, args):
        op = self.schema.get(op_name) if isinstance(op_name, str) else None
        if op is None:
            raise DfsError(errno.ENOSYS, f"unknown operation {op_name!r}")
        checked = check_fields(op, args)
        try:
            return await self.handlers[op_name](**checked)
        except DfsError:
            raise
        except Exception:
            log.error("operation failed", exc_info=True, server=self.name, op=op_name)
            raise DfsError(errno.EIO, f"{op_name}: internal error on {self.name}") from None


class _Stats:
    """A server's requests as metrics: how many per operation and outcome, how
    long they took (read to reply sent) and how many bytes they carried."""

    def __init__(self, metrics: Registry, server: Server):
        self.requests = metrics.counter(
            "dfs_rpc_requests_total", "Requests answered, by operation and outcome (ok or "
            "the errno name).", ("op", "result"))
        self.seconds = metrics.histogram(
            "dfs_rpc_request_seconds", "Time from reading a request to sending its reply "
            "(not of long polls such as log_read, which wait for something to happen).",
            ("op",))
        self.received = metrics.counter(
            "dfs_rpc_received_bytes_total", "Bytes of request frames, by operation.", ("op",))
        metrics.gauge("dfs_rpc_requests_in_flight", "Requests read and not answered yet.",
                      lambda: sum(server.in_hand.values()))

    def record(self, op: str | None, outcome: int, size: int, seconds: float | None) -> None:
        """Count a request; `seconds` None for a long poll (Op.waits)."""
        op = op or "unknown"
        result = errno.errorcode.get(outcome, str(outcome)) if outcome else "ok"
        self.requests.inc(op, result)
        if seconds is not None:
            self.seconds.observe(seconds, op)
        self.received.inc(op, amount=size)


class _Running:
    """The requests of one connection running on the server: at most
    MAX_IN_FLIGHT of them and MAX_BYTES_IN_FLIGHT bytes of their frames (one
    request is always admitted, whatever its size). Only the connection's
    reader admits, so a plain wake-up on release is enough."""

    __slots__ = ("count", "bytes", "_freed")

    def __init__(self):
        self.count = 0
        self.bytes = 0
        self._freed: trio.Event | None = None

    async def admit(self, size: int) -> None:
        while self.count >= MAX_IN_FLIGHT or (
                self.count and self.bytes + size > MAX_BYTES_IN_FLIGHT):
            self._freed = trio.Event()
            await self._freed.wait()
        self.count += 1
        self.bytes += size

    def release(self, size: int) -> None:
        self.count -= 1
        self.bytes -= size
        if self._freed is not None:
            self._freed.set()
            self._freed = None


class PendingReply:
    """A request on the wire; the reader settles it, `result` waits for that.

    The waiting task is parked and woken directly rather than through a
    trio.Event: one fewer object and wake-up path per request."""

    __slots__ = ("client", "op", "request_id", "done", "errno", "result_value", "_waiter")

    def __init__(self, client: "Client", op: str, request_id: int):
        self.client = client
        self.op = op
        self.request_id = request_id
        self.done = False
        self.errno = errno.ECONNRESET
        self.result_value = "connection lost before the reply"
        self._waiter = None

    def settle(self, error: int | None = None, value=None) -> None:
        """Record the reply (or, without arguments, the lost connection) and
        wake the task waiting in `result`."""
        if self.done:
            return
        if error is not None:
            self.errno, self.result_value = error, value
        self.done = True
        if self._waiter is not None:
            trio.lowlevel.reschedule(self._waiter)
            self._waiter = None

    async def _wait(self) -> None:
        self._waiter = trio.lowlevel.current_task()

        def abort(_):
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def result(self, timeout: float | None = None):
        try:
            if not self.done:
                if timeout is None:
                    await self._wait()
                else:
                    with trio.move_on_after(timeout) as scope:
                        await self._wait()
                    if scope.cancelled_caught:
                        raise DfsError(errno.ETIMEDOUT,
                                       f"{self.op} on {self.client.addr} timed out")
        finally:
            self.client._pending.pop(self.request_id, None)
        if self.errno:
            raise DfsError(self.errno, str(self.result_value))
        return self.result_value


class Client:
    """A connection to one server, opened lazily and reopened after a failure.

    `call` raises DfsError with the server's errno, or with ECONNREFUSED /
    ECONNRESET / ETIMEDOUT when the server cannot be reached. Idempotent
    operations are retried across reconnects until `retry_for` seconds pass.
    """

    def __init__(self, addr: str, secret: bytes, schema: dict[str, Op], *,
                 connect_timeout: float = 5.0, retry_for: float = 0.0,
                 on_reconnect: Callable[[Callable], Awaitable[None]] | None = None):
        self.addr = addr
        # Awaited on every connection after the first, before any other request
        # can use it, with `call(op, **args)` that sends on that connection
        # only (a peer that lost its state learns it back first). If it raises,
        # the connection is dropped and the error goes to whoever connected.
        self.on_reconnect = on_reconnect
        self._connected_once = False
        self.secret = secret
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self._framed: FramedStream | None = None
        # A new connection while on_reconnect runs on it, not yet published.
        self._connecting: FramedStream | None = None
        self._pending: dict[int, PendingReply] = {}
        self._ids = itertools.count(1)
        self._connect_lock = trio.Lock()
        self._closed = False
        # The protocol version of the server on the last connection (auth.py).
        self.peer_protocol = 1

    async def _connect(self) -> FramedStream:
        if self._framed is not None:
            return self._framed
        async with self._connect_lock:
            if self._framed is not None:
                return self._framed
            if self._closed:
                raise DfsError(errno.ESHUTDOWN, f"client for {self.addr} is closed")
            host, port = parse_addr(self.addr)
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await trio.open_tcp_stream(host, port)
                    _tune(stream)
                    framed = FramedStream(stream)
                    self.peer_protocol = await client_handshake(framed, self.secret)
            except trio.TooSlowError:
                raise DfsError(errno.ETIMEDOUT, f"timed out connecting to {self.addr}") from None
            except (OSError, EOFError, ProtocolError, trio.BrokenResourceError) as exc:
                raise DfsError(errno.ECONNREFUSED, f"cannot connect to {self.addr}: {exc}") from None
            trio.lowlevel.spawn_system_task(self._reader, framed)
            if self._connected_once and self.on_reconnect is not None:
                async def call(op: str, **args):
                    return await (await self._send(op, args, framed)).result()
                self._connecting = framed
                try:
                    await self.on_reconnect(call)
                except BaseException:
                    await self._drop(framed)
                    raise
                finally:
                    self._connecting = None
                if self._closed:
                    # aclose came while on_reconnect ran: the connection is gone.
                    raise DfsError(errno.ESHUTDOWN, f"client for {self.addr} is closed")
            self._connected_once = True
            self._framed = framed
            return framed

    async def _reader(self, framed: FramedStream) -> None:
        try:
            while True:
                message = await framed.receive()
                if (not isinstance(message, list) or len(message) != 4
                        or message[0] != REPLY):
                    raise ProtocolError("not a reply")
                pending = self._pending.pop(message[1], None)
                if pending is not None:
                    pending.settle(message[2], message[3])
        except (EOFError, ProtocolError, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError):
            pass
        except Exception:
            log.error("reply reader failed", exc_info=True, peer=self.addr)
        finally:
            await self._drop(framed)

    async def _drop(self, framed: FramedStream) -> None:
        # Only the live connection's requests are pending: an old connection
        # whose reader ends late must not fail those of its successor.
        if framed is self._framed or framed is self._connecting:
            self._framed = None
            for pending in self._pending.values():
                pending.settle()
            self._pending.clear()
        with trio.CancelScope(shield=True):
            await framed.aclose()

    async def _send(self, op: str, args: dict | list,
                    framed: FramedStream | None = None) -> "PendingReply":
        framed = framed or await self._connect()
        request_id = next(self._ids)
        pending = self._pending[request_id] = PendingReply(self, op, request_id)
        try:
            if isinstance(args, dict):
                await framed.send([REQUEST, request_id, op, args])
            else:
                await framed.send_request(request_id, op, args)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._pending.pop(request_id, None)
            await self._drop(framed)
            raise DfsError(errno.ECONNRESET, f"connection to {self.addr} lost") from None
        except BaseException:
            self._pending.pop(request_id, None)
            raise
        return pending

    async def _call_once(self, op: str, args: dict, timeout: float | None):
        return await (await self._send(op, args)).result(timeout)

    async def call(self, op: str, timeout: float | None = None, **args):
        return await self._call(op, args, timeout)

    async def protocol(self) -> int:
        """The protocol version of the server, connecting first if need be."""
        await self._connect()
        return self.peer_protocol

    async def send_packed(self, op: str, packed_args: list) -> "PendingReply":
        """Send a request whose fields were packed by framing.encode_fields
        (the same buffers may go to several servers) without waiting for the reply,
        so one task can have it in flight on many connections. No retries."""
        if op not in self.schema:
            raise ValueError(f"unknown operation {op!r}")
        return await self._send(op, packed_args)

    async def _call(self, op: str, args: dict, timeout: float | None):
        spec = self.schema.get(op)
        if spec is None:
            raise ValueError(f"unknown operation {op!r}")
        deadline = trio.current_time() + self.retry_for
        delay = 0.05
        while True:
            try:
                return await self._call_once(op, args, timeout)
            except DfsError as exc:
                transient = exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET)
                # ECONNREFUSED comes from connecting: the request never left,
                # so any operation may be sent again (a restarting server).
                may_retry = (spec.idempotent or exc.errno == errno.ECONNREFUSED
                             or "token" in args)
                if not (transient and may_retry) or trio.current_time() + delay > deadline:
                    raise
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def aclose(self) -> None:
        self._closed = True
        for framed in (self._framed, self._connecting):
            if framed is not None:
                await self._drop(framed)


class ClientPool:
    """One lazily opened Client per address (used for chunk servers)."""

    def __init__(self, secret: bytes, schema: dict[str, Op], **client_options):
        self.secret = secret
        self.schema = schema
        self.options = client_options
        self._clients: dict[str, Client] = {}

    def get(self, addr: str) -> Client:
        client = self._clients.get(addr)
        if client is None:
            client = self._clients[addr] = Client(addr, self.secret, self.schema, **self.options)
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


__all__ = ["Server", "Client", "ClientPool", "parse_addr", "MAX_FRAME"]
