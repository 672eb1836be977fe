"""Bad input on the wire is refused and the metaserver keeps serving everyone else."""

import errno
import struct

import pytest
import trio

from dfs.auth import client_handshake
from dfs.framing import REPLY, REQUEST, FramedStream, encode
from dfs.rpc import parse_addr
from test_metaserver_support import ROOT, error_of, make_dir, meta, meta_factory, names

pytestmark = pytest.mark.timeout(60)
__all__ = ["meta", "meta_factory"]


async def raw_connection(addr: str) -> trio.SocketStream:
    host, port = parse_addr(addr)
    return await trio.open_tcp_stream(host, port)


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """Read until the server closes the connection (True) or 5 s pass (False)."""
    with trio.move_on_after(5):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def authenticated(addr: str, secret: bytes) -> FramedStream:
    framed = FramedStream(await raw_connection(addr))
    await client_handshake(framed, secret)
    return framed


async def ask(framed: FramedStream, request_id: int, op, args) -> list:
    await framed.send([REQUEST, request_id, op, args])
    reply = await framed.receive()
    assert reply[0] == REPLY and reply[1] == request_id
    return reply


def test_bad_peers_are_refused_while_others_are_served(meta):
    async def body(good):
        await make_dir(good, ROOT, b"before")

        wrong = meta.client(secret=b"not-the-cluster-secret-at-all")
        assert await error_of(wrong.call("getattr", ino=ROOT)) == errno.EACCES
        await wrong.aclose()
        assert await names(good, ROOT) == [b"before"]

        # Garbage instead of a handshake.
        stream = await raw_connection(meta.addr)
        await stream.send_all(b"\x00\x00\x00\x05hello, this is not msgpack" * 10)
        assert await closed_by_server(stream)
        await stream.aclose()

        # A huge length prefix after a valid handshake: refused before buffering.
        framed = await authenticated(meta.addr, meta.secret)
        await framed.stream.send_all(struct.pack(">I", 0xFFFFFFF0) + b"x" * 100)
        assert await closed_by_server(framed.stream)
        await framed.aclose()

        # A frame cut short by the peer closing.
        framed = await authenticated(meta.addr, meta.secret)
        await framed.stream.send_all(struct.pack(">I", 1000) + b"\x93" * 10)
        await framed.stream.send_eof()
        assert await closed_by_server(framed.stream)
        await framed.aclose()

        # Malformed msgpack in a well-sized frame.
        framed = await authenticated(meta.addr, meta.secret)
        await framed.stream.send_all(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        assert await closed_by_server(framed.stream)
        await framed.aclose()

        # Well-framed but wrong requests get an errno each; the connection stays.
        framed = await authenticated(meta.addr, meta.secret)
        assert (await ask(framed, 1, "no_such_op", {}))[2] == errno.ENOSYS
        assert (await ask(framed, 2, "getattr", {"ino": "one"}))[2] == errno.EINVAL
        assert (await ask(framed, 3, "getattr", {}))[2] == errno.EINVAL
        assert (await ask(framed, 4, "getattr", {"ino": 1, "extra": 2}))[2] == errno.EINVAL
        assert (await ask(framed, 5, "getattr", [1]))[2] == errno.EINVAL
        assert (await ask(framed, 6, "mkdir", {"parent": ROOT, "name": "str-not-bytes",
                                               "mode": 0o755, "uid": 0, "gid": 0}))[2] \
            == errno.EINVAL
        assert (await ask(framed, 7, "setattr", {"ino": ROOT,
                                                 "changes": {"uid": [1]}}))[2] == errno.EINVAL
        assert (await ask(framed, 8, "cs_register", {"addr": "nowhere", "capacity": 1,
                                                     "used": 0, "chunks": []}))[2] \
            == errno.EINVAL
        assert (await ask(framed, 9, "cs_register", {"addr": "127.0.0.1:1", "capacity": 1,
                                                     "used": 0, "chunks": [["x", 1]]}))[2] \
            == errno.EINVAL
        assert (await ask(framed, 10, "mkdir", {"parent": ROOT, "name": b"t", "mode": 0o755,
                                                "uid": 0, "gid": 0,
                                                "token": b"t" * 1000}))[2] == errno.EINVAL
        assert (await ask(framed, 11, "resolve", {"path": b"/" + b"p" * 600}))[2] \
            == errno.ENAMETOOLONG
        assert (await ask(framed, 12, "getattr", {"ino": -1}))[2] == errno.EINVAL
        assert (await ask(framed, 13, "chunk_read", {"ino": ROOT, "index": -5}))[2] \
            == errno.EISDIR
        reply = await ask(framed, 14, "getattr", {"ino": ROOT})
        assert reply[2] == 0 and reply[3]["ino"] == ROOT
        # Not a request at all: that connection is closed.
        await framed.stream.send_all(struct.pack(">I", 3) + encode([1, 2])[:3])
        assert await closed_by_server(framed.stream)
        await framed.aclose()

        await make_dir(good, ROOT, b"after")
        assert await names(good, ROOT) == [b"after", b"before"]

    meta.run(body)
    assert meta.proc.poll() is None, "the metaserver must still be running"
