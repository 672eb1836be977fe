"""Mutual HMAC handshake: both ends prove they hold the cluster secret.

The server speaks first with a random nonce; the client answers with its own
nonce and an HMAC over both; the server checks it and answers with its own
HMAC, which the client checks. The secret never crosses the wire, and a replay
fails because every connection has fresh nonces.
"""

import hashlib
import hmac
import os

from .errors import DfsError, ProtocolError
from .framing import FramedStream

# What a server understands, sent in its greeting for clients that can speak
# to older servers too: 1, the first; 2, file data carries CRC32Cs
# (transit.py), which a server of 1 refuses as unknown fields; 3, a
# metaserver's exclusive folder leases, inode_grant and changes_ahead, and
# `reader` on lookup, getattr and readdir.
PROTOCOL_VERSION = 3
HANDSHAKE_TIMEOUT = 10.0


def _proof(secret: bytes, role: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, role + server_nonce + client_nonce, hashlib.sha256).digest()


def _field(message, name: str, kind: type):
    if not isinstance(message, dict) or not isinstance(message.get(name), kind):
        raise ProtocolError(f"handshake message lacks a valid {name!r}")
    return message[name]


async def server_handshake(framed: FramedStream, secret: bytes) -> None:
    server_nonce = os.urandom(32)
    await framed.send({"dfs": PROTOCOL_VERSION, "nonce": server_nonce})
    hello = await framed.receive()
    client_nonce = _field(hello, "nonce", bytes)
    proof = _field(hello, "proof", bytes)
    if not hmac.compare_digest(proof, _proof(secret, b"client", server_nonce, client_nonce)):
        await framed.send({"error": "authentication failed: wrong cluster secret"})
        raise DfsError(13, "peer presented a wrong cluster secret")
    await framed.send({"proof": _proof(secret, b"server", server_nonce, client_nonce)})


async def client_handshake(framed: FramedStream, secret: bytes) -> int:
    """Prove the secret both ways; return the server's protocol version."""
    greeting = await framed.receive()
    server_nonce = _field(greeting, "nonce", bytes)
    version = greeting.get("dfs")
    client_nonce = os.urandom(32)
    await framed.send({"nonce": client_nonce,
                       "proof": _proof(secret, b"client", server_nonce, client_nonce)})
    answer = await framed.receive()
    if isinstance(answer, dict) and "error" in answer:
        raise DfsError(13, str(answer["error"]))
    proof = _field(answer, "proof", bytes)
    if not hmac.compare_digest(proof, _proof(secret, b"server", server_nonce, client_nonce)):
        raise DfsError(13, "server failed to prove it holds the cluster secret")
    return version if isinstance(version, int) and not isinstance(version, bool) else 1
