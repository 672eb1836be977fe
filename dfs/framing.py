"""Length-prefixed msgpack frames over a trio socket stream.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.
Messages on an established connection are lists:

    [REQUEST, request_id, op_name, {field: value, ...}]
    [REPLY,   request_id, errno,   result_or_message]

errno 0 means success and the fourth element is the result; any other value is
a POSIX errno and the fourth element is a human-readable message.
"""

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


def encode(message) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def decode(payload) -> object:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"malformed msgpack frame: {exc}") from None


class FramedStream:
    """Reads and writes whole frames; sends are serialised, receives are not shared."""

    def __init__(self, stream: trio.SocketStream, max_frame: int = MAX_FRAME):
        self.stream = stream
        self.max_frame = max_frame
        self._send_lock = trio.Lock()
        self._buffer = bytearray()

    async def _fill(self, n: int) -> None:
        """Buffer at least n bytes (n is small: a header or a small frame)."""
        while len(self._buffer) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                if self._buffer:
                    raise ProtocolError("connection closed in the middle of a frame")
                raise EOFError
            self._buffer += chunk

    async def _receive_body(self, length: int):
        if len(self._buffer) >= length:
            body = self._buffer[:length]
            del self._buffer[:length]
            return body
        # Large frames are read straight into their own buffer: no copying
        # through the small read buffer, no growing allocations.
        body = bytearray(length)
        have = len(self._buffer)
        body[:have] = self._buffer
        self._buffer.clear()
        view = memoryview(body)
        while have < length:
            got = await self.stream.socket.recv_into(view[have:], length - have)
            if not got:
                raise ProtocolError("connection closed in the middle of a frame")
            have += got
        return body

    async def receive(self) -> object:
        """Return the next message; EOFError on a clean close between frames."""
        await self._fill(_HEADER.size)
        (length,) = _HEADER.unpack_from(self._buffer)
        del self._buffer[:_HEADER.size]
        if length > self.max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        return decode(await self._receive_body(length))

    async def send(self, message) -> None:
        await self._send_frame(b"", encode(message))

    async def send_request(self, request_id: int, op: str, packed_args: bytes) -> None:
        """Send a request whose fields were packed beforehand with `encode`, so
        the same bytes can go to several peers without packing them again."""
        # A msgpack array of four whose last element is the packed fields.
        prefix = b"\x94" + encode(REQUEST) + encode(request_id) + encode(op)
        await self._send_frame(prefix, packed_args)

    async def _send_frame(self, prefix: bytes, body: bytes) -> None:
        length = len(prefix) + len(body)
        if length > self.max_frame:
            raise ProtocolError(f"refusing to send a frame of {length} bytes")
        head = _HEADER.pack(length) + prefix
        async with self._send_lock:
            # One system call for small frames; no copy of large bodies.
            if len(body) < 65536:
                await self.stream.send_all(head + body)
            else:
                await self.stream.send_all(head)
                await self.stream.send_all(body)

    async def aclose(self) -> None:
        await self.stream.aclose()
