"""FramedStream over a real socket pair: frames of every size arrive whole and
in order however the bytes are split, and broken input gets a clear error."""

import os
import struct

import pytest
import trio

from dfs.errors import ProtocolError
from dfs.framing import (JOIN_BELOW, MAX_FRAME, MAX_PIECES, READ_BUFFER, FramedStream, Pieces,
                         decode, encode, encode_fields)

pytestmark = pytest.mark.timeout(60)


async def _pair() -> tuple[FramedStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return FramedStream(trio.SocketStream(a)), trio.SocketStream(b)


def _frame(message) -> bytes:
    payload = encode(message)
    return struct.pack(">I", len(payload)) + payload


# Sizes around the read buffer, so frames straddle its end, fill it, and
# outgrow it.
SIZES = [0, 1, 100, 4096, 65535, 65536, READ_BUFFER // 2 + 7, READ_BUFFER - 12,
         READ_BUFFER, READ_BUFFER + 1, 1024 * 1024, 3 * 1024 * 1024]


# Tiny pieces get only the smaller frames, for time; with 7-byte pieces those
# still run past the end of the read buffer.
@pytest.mark.parametrize("piece, count", [(1, 4), (7, 7), (4099, len(SIZES)),
                                          (1 << 20, len(SIZES))])
def test_frames_survive_any_split(piece, count):
    messages = [[1, i, 0, {"data": os.urandom(size)}] for i, size in enumerate(SIZES[:count])]
    wire = b"".join(_frame(m) for m in messages)

    async def main():
        framed, raw = await _pair()
        async with trio.open_nursery() as nursery:
            async def dribble():
                for at in range(0, len(wire), piece):
                    await raw.send_all(wire[at:at + piece])
                await raw.send_eof()
            nursery.start_soon(dribble)
            for expected in messages:
                assert await framed.receive() == expected
            with pytest.raises(EOFError):
                await framed.receive()
        await framed.aclose()
        await raw.aclose()

    trio.run(main)


def test_sent_frames_are_received_in_order_with_concurrent_senders():
    async def main():
        a, b = trio.socket.socketpair()
        sender, receiver = FramedStream(trio.SocketStream(a)), FramedStream(trio.SocketStream(b))
        sizes = [10, 70_000, 2_000_000, 5, 300_000]
        async with trio.open_nursery() as nursery:
            for i, size in enumerate(sizes):
                nursery.start_soon(sender.send, [i, b"x" * size])
            got = {}
            for _ in sizes:
                i, data = await receiver.receive()
                got[i] = len(data)
        assert got == dict(enumerate(sizes))
        await sender.send_request(7, "op", encode_fields({"k": 1}))
        assert await receiver.receive() == [0, 7, "op", {"k": 1}]
        big = os.urandom(3 * JOIN_BELOW)
        await sender.send_request(8, "op", encode_fields({"data": Pieces([big, b"y"])}))
        assert await receiver.receive() == [0, 8, "op", {"data": big + b"y"}]
        await sender.send_reply(9, {"data": big})
        assert await receiver.receive() == [1, 9, 0, {"data": big}]
        await sender.send_reply(10, [1, 2])
        assert await receiver.receive() == [1, 10, 0, [1, 2]]
        await sender.aclose()
        with pytest.raises(EOFError):
            await receiver.receive()
        await receiver.aclose()

    trio.run(main)


def test_fields_encode_as_msgpack_with_bulk_data_uncopied():
    big = os.urandom(2 * JOIN_BELOW)
    view = memoryview(big)[1:]
    many = [b"%d" % i * 5000 for i in range(MAX_PIECES + 1)]
    fields = {"chunk": 3, "small": b"abc", "data": Pieces([view, b"tail"]), "name": "x",
              "whole": big, "many": Pieces(many), "short": Pieces([b"a", b"b"]), "n": None}
    parts = encode_fields(fields)
    assert decode(b"".join(parts)) == {**fields, "data": bytes(view) + b"tail",
                                       "many": b"".join(many), "short": b"ab"}
    # Large values are among the parts themselves, not copies of them.
    assert any(part is view for part in parts) and any(part is big for part in parts)
    assert not any(part is piece for part in parts for piece in many)
    assert decode(b"".join(encode_fields({}))) == {}


@pytest.mark.parametrize("wire, error", [
    (struct.pack(">I", MAX_FRAME + 1), "exceeds the limit"),
    (struct.pack(">I", 1000) + b"\x93" * 10, "middle of a frame"),
    (struct.pack(">I", 2_000_000) + b"\x00" * 10, "middle of a frame"),
    (struct.pack(">I", 3) + b"\xc1\xc1\xc1", "malformed msgpack"),
    (b"\x00\x00", "middle of a frame"),
])
def test_broken_input_is_a_protocol_error(wire, error):
    async def main():
        framed, raw = await _pair()
        await raw.send_all(wire)
        await raw.send_eof()
        with pytest.raises(ProtocolError, match=error):
            await framed.receive()
        await framed.aclose()
        await raw.aclose()

    trio.run(main)


def test_oversize_send_is_refused_and_closed_stream_is_reported():
    async def main():
        framed, raw = await _pair()
        with pytest.raises(ProtocolError):
            await framed.send({"data": b"x" * MAX_FRAME})
        await raw.aclose()
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(100):
                await framed.send({"data": b"x" * 100_000})
        await framed.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await framed.send({})
        with pytest.raises(trio.ClosedResourceError):
            await framed.receive()

    trio.run(main)
