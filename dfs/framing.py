"""Length-prefixed msgpack frames over a trio socket stream.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.
Messages on an established connection are lists:

    [REQUEST, request_id, op_name, {field: value, ...}]
    [REPLY,   request_id, errno,   result_or_message]

errno 0 means success and the fourth element is the result; any other value is
a POSIX errno and the fourth element is a human-readable message.

FramedStream does its own I/O on the socket's descriptor instead of going
through trio's SocketStream: trio yields to the scheduler after every
successful send and receive, which was most of the CPU cost of a small
request. Here a send that the kernel takes at once returns without yielding,
a receive waits for readiness only when the socket is empty, and one read
fills a buffer that may hold many frames.

Bulk data is not copied into a frame on its way out: `encode_fields` packs a
map around its large binary values (bytes, or `Pieces` that go out as one)
and `send_request` and `send_reply` hand them to the kernel as they are. On the
wire it is plain msgpack all the same.
"""

import os
import struct

import msgpack
import trio

from .errors import ProtocolError

REQUEST = 0
REPLY = 1

# Data requests carry at most MAX_DATA bytes; the frame limit leaves room for
# the envelope. Anything larger is refused before a byte of it is buffered.
MAX_DATA = 4 * 1024 * 1024
MAX_FRAME = MAX_DATA + 64 * 1024

_HEADER = struct.Struct(">I")
# msgpack's bin 32: a marker byte and the length, then the bytes.
_BIN32 = struct.Struct(">BI")
_BIN32_MARKER = 0xc6

# Frames up to about this size are read through the connection's buffer,
# larger ones into a spare buffer of their own. Frames below JOIN_BELOW are
# sent joined with their header (one copy, one system call); larger ones go
# out as the buffers they are made of.
READ_BUFFER = 256 * 1024
JOIN_BELOW = 64 * 1024
# A value sent as many pieces is joined first beyond this many (the kernel
# takes at most IOV_MAX buffers in one send).
MAX_PIECES = 64

# Buffers for frames larger than READ_BUFFER, shared by the process's
# connections and kept once used: a fresh buffer of MiBs costs a page fault
# per page (about 4 ms per 4 MiB here, against 0.1 ms to copy into a warm one).
SPARE_BUFFERS = 4
_spare_buffers: list[bytearray] = []

# A connection whose reads keep finding data does not yield to the scheduler
# on its own; after this many reads in a row it does, so it cannot starve
# the other tasks.
READS_BEFORE_YIELD = 16


def encode(message) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def decode(payload) -> object:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"malformed msgpack frame: {exc}") from None


class Pieces:
    """Bytes-like buffers that go on the wire as one binary value, in order,
    without being joined first. The buffers must not change until sent."""

    __slots__ = ("buffers", "size")

    def __init__(self, buffers: list):
        self.buffers = buffers
        self.size = sum(len(buffer) for buffer in buffers)

    def __len__(self) -> int:
        return self.size

    def append(self, buffer) -> None:
        self.buffers.append(buffer)
        self.size += len(buffer)

    def join(self) -> bytes:
        return b"".join(self.buffers)


def encode_fields(fields: dict) -> list:
    """Pack a map as a list of buffers whose concatenation is its msgpack
    encoding, leaving large binary values (and Pieces) uncopied."""
    parts = []
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    packer.pack_map_header(len(fields))
    for key, value in fields.items():
        packer.pack(key)
        if isinstance(value, Pieces):
            if len(value.buffers) > MAX_PIECES or value.size < JOIN_BELOW:
                packer.pack(value.join())
                continue
            buffers = value.buffers
        elif isinstance(value, (bytes, bytearray)) and len(value) >= JOIN_BELOW:
            buffers = [value]
        else:
            packer.pack(value)
            continue
        parts.append(packer.bytes() + _BIN32.pack(_BIN32_MARKER, len(value)))
        packer.reset()
        parts.extend(buffers)
    tail = packer.bytes()
    if tail:
        parts.append(tail)
    return parts


class FramedStream:
    """Reads and writes whole frames; sends are serialised, receives are not shared.

    `stream` stays usable for raw access (tests write broken frames with it);
    errors from the socket surface as trio.BrokenResourceError and, after
    `aclose`, trio.ClosedResourceError, as they would from the stream.
    """

    def __init__(self, stream: trio.SocketStream, max_frame: int = MAX_FRAME):
        self.stream = stream
        self.max_frame = max_frame
        self._send_lock = trio.Lock()
        self._buffer = bytearray(READ_BUFFER)
        self._view = memoryview(self._buffer)
        self._start = 0   # first unparsed byte in _buffer
        self._end = 0     # end of the bytes received into _buffer
        self._reads_without_yield = 0
        self._drained = False
        # Body size of the frame `receive` returned last (servers budget by it).
        self.last_size = 0

    def _fd(self) -> int:
        fd = self.stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the connection is closed")
        return fd

    async def _recv_into(self, view: memoryview) -> int:
        """Receive at least one byte into `view`; 0 means the peer closed."""
        if self._drained:
            # The last read emptied the socket: most likely nothing has come
            # since, so wait first rather than spend a read on EAGAIN.
            self._reads_without_yield = 0
            await trio.lowlevel.wait_readable(self._fd())
        while True:
            fd = self._fd()
            try:
                got = os.readv(fd, [view])
                break
            except BlockingIOError:
                self._reads_without_yield = 0
                await trio.lowlevel.wait_readable(fd)
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
        self._drained = got < len(view)
        self._reads_without_yield += 1
        if self._reads_without_yield >= READS_BEFORE_YIELD:
            self._reads_without_yield = 0
            # Shielded: the bytes are already taken from the socket.
            await trio.lowlevel.cancel_shielded_checkpoint()
        return got

    async def _fill(self) -> None:
        """Receive more bytes into the buffer, after those already there."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buffer):
            # Move the partial frame to the front to make room behind it
            # (through a copy: the two ranges may overlap).
            have = self._end - self._start
            self._buffer[:have] = bytes(self._view[self._start:self._end])
            self._start, self._end = 0, have
        got = await self._recv_into(self._view[self._end:])
        if not got:
            if self._end > self._start:
                raise ProtocolError("connection closed in the middle of a frame")
            raise EOFError
        self._end += got

    async def _receive_large(self, length: int) -> object:
        """Read a frame body too large for the buffer into a spare one and decode it."""
        body = _spare_buffers.pop() if _spare_buffers and length <= MAX_FRAME else (
            bytearray(max(length, MAX_FRAME)))
        have = self._end - self._start
        body[:have] = self._view[self._start:self._end]
        self._start = self._end = 0
        view = memoryview(body)[:length]
        while have < length:
            got = await self._recv_into(view[have:])
            if not got:
                raise ProtocolError("connection closed in the middle of a frame")
            have += got
        message = decode(view)
        # Decoding copied what the message holds, so the buffer is free again.
        if len(_spare_buffers) < SPARE_BUFFERS and len(body) == MAX_FRAME:
            _spare_buffers.append(body)
        return message

    async def receive(self) -> object:
        """Return the next message; EOFError on a clean close between frames."""
        while True:
            start = self._start
            buffered = self._end - start
            if buffered >= _HEADER.size:
                (length,) = _HEADER.unpack_from(self._buffer, start)
                if length > self.max_frame:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the limit of {self.max_frame}")
                end = start + _HEADER.size + length
                self.last_size = length
                if end <= self._end:
                    self._start = end
                    return decode(self._view[start + _HEADER.size:end])
                if _HEADER.size + length > len(self._buffer):
                    self._start += _HEADER.size
                    return await self._receive_large(length)
            await self._fill()

    async def send(self, message) -> None:
        await self._send_frame(b"", [encode(message)])

    async def send_request(self, request_id: int, op: str, fields: list) -> None:
        """Send a request whose fields were packed beforehand with
        `encode_fields`, so they can go to several peers without packing
        them again."""
        # A msgpack array of four whose last element is the packed fields.
        await self._send_frame(b"\x94" + encode(REQUEST) + encode(request_id) + encode(op),
                               fields)

    async def send_reply(self, request_id: int, result) -> None:
        """Send a successful reply; a map's large binary values are not copied."""
        prefix = b"\x94" + encode(REPLY) + encode(request_id) + encode(0)
        await self._send_frame(prefix, encode_fields(result) if isinstance(result, dict)
                               else [encode(result)])

    async def _send_frame(self, prefix: bytes, body: list) -> None:
        """Send `prefix` and the `body` buffers as one frame."""
        length = len(prefix) + sum(len(part) for part in body)
        if length > self.max_frame:
            raise ProtocolError(f"refusing to send a frame of {length} bytes")
        head = _HEADER.pack(length) + prefix
        if length < JOIN_BELOW:
            buffers = [head + b"".join(body)]
        else:
            buffers = [head, *body]
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self._send_all(buffers, len(head) + length - len(prefix))
        finally:
            lock.release()

    async def _send_all(self, buffers: list, total: int) -> None:
        remaining = total
        while True:
            fd = self._fd()
            try:
                sent = os.writev(fd, buffers)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(f"send failed: {exc}") from exc
            remaining -= sent
            if not remaining:
                return
            buffers = _after(buffers, sent)
            try:
                await trio.lowlevel.wait_writable(fd)
            except trio.Cancelled:
                if remaining < total:
                    # Part of the frame is out: what follows on this
                    # connection would be misread, so it ends here.
                    self.stream.socket.close()
                raise

    async def aclose(self) -> None:
        await self.stream.aclose()


def _after(buffers: list, sent: int) -> list:
    """The part of `buffers` that follows their first `sent` bytes."""
    rest = []
    for buffer in buffers:
        if sent >= len(buffer):
            sent -= len(buffer)
        else:
            rest.append(memoryview(buffer)[sent:])
            sent = 0
    return rest
