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

    async def _receive_exactly(self, n: int) -> bytearray:
        while len(self._buffer) < n:
            chunk = await self.stream.receive_some(max(n - len(self._buffer), 65536))
            if not chunk:
                if self._buffer:
                    raise ProtocolError("connection closed in the middle of a frame")
                raise EOFError
            self._buffer += chunk
        data = self._buffer[:n]
        del self._buffer[:n]
        return data

    async def receive(self) -> object:
        """Return the next message; EOFError on a clean close between frames."""
        (length,) = _HEADER.unpack(await self._receive_exactly(_HEADER.size))
        if length > self.max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        return decode(await self._receive_exactly(length))

    async def send(self, message) -> None:
        payload = encode(message)
        if len(payload) > self.max_frame:
            raise ProtocolError(f"refusing to send a frame of {len(payload)} bytes")
        header = _HEADER.pack(len(payload))
        async with self._send_lock:
            if len(payload) < 65536:
                await self.stream.send_all(header + payload)
            else:
                await self.stream.send_all(header)
                await self.stream.send_all(payload)

    async def aclose(self) -> None:
        await self.stream.aclose()
