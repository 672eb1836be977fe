"""CRC32C over data on its way between processes.

TCP's checksum misses some damage (and none of it is checked between a NIC
and memory), and a chunk server computes its blocks' CRCs from the bytes it
received: damage before that point would be stored with a valid CRC and
served for good. So whoever sends file data or a copy of the metadata
attaches CRC32Cs to it (a client's writes, a chunk server's read replies, the
metaserver's commits and copies for metaloggers and backups) and the
receiver checks them before using the data; a mismatch is EBADMSG, and the
data is sent or fetched again, up to RETRIES times.

A read reply of a chunk server carries one CRC per piece of its data cut
where the chunk's 64 KiB blocks begin: for a whole block that is the CRC the
server keeps for it and checked as it read it, so a server computes no CRC
over a read of whole blocks. Other data carries one CRC for all of it.
"""

import errno

from crc32c import crc32c

from .errors import DfsError
from .framing import Pieces
from .ops import BLOCK_SIZE

# Times damaged data is sent or fetched again before giving up.
RETRIES = 3
# The protocol version (auth.py) from which servers take CRCs with writes;
# older ones get writes without.
PROTOCOL = 2


def crc_of(data: bytes | bytearray | memoryview | Pieces) -> int:
    if isinstance(data, Pieces):
        crc = 0
        for buffer in data.buffers:
            crc = crc32c(buffer, crc)
        return crc
    return crc32c(data)


def with_crc(data) -> dict:
    """A reply carrying `data` and its CRC."""
    return {"data": data, "crc": crc_of(data)}


async def fetch(call, check_reply, on_damage=None) -> dict:
    """`await call()` until its reply passes `check_reply` (which raises
    EBADMSG), at most RETRIES times more; on_damage(attempt) after each
    damaged one."""
    for attempt in range(RETRIES + 1):
        reply = await call()
        try:
            check_reply(reply)
            return reply
        except DfsError as exc:
            if exc.errno != errno.EBADMSG:
                raise
            if on_damage is not None:
                on_damage(attempt)
            if attempt == RETRIES:
                raise


def spans(offset: int, length: int) -> list[tuple[int, int]]:
    """(start, stop) within data read at `offset` of each piece, cut where a
    block of the chunk begins."""
    found, start = [], 0
    while start < length:
        stop = min(length, start + BLOCK_SIZE - (offset + start) % BLOCK_SIZE)
        found.append((start, stop))
        start = stop
    return found


def _damaged(what: str) -> DfsError:
    return DfsError(errno.EBADMSG, f"{what}: the data was damaged on its way here "
                                   f"(CRC32C mismatch)")


def check(data, crc: int | None, what: str) -> None:
    """Raise EBADMSG if `data` does not match the `crc` sent with it (None:
    the sender attached none, as one older than CRCs on the wire does)."""
    if crc is not None and crc32c(data) != crc:
        raise _damaged(what)


def piece_crcs(data, offset: int, kept) -> list[int]:
    """The CRC of each piece of `data`, read at `offset`: kept(start, length)
    where that gives one (a whole block the chunk server checked as it read
    it), else computed."""
    view = memoryview(data)
    return [crc if (crc := kept(offset + start, stop - start)) is not None
            else crc32c(view[start:stop]) for start, stop in spans(offset, len(view))]


def check_pieces(data, offset: int, crcs: list | None, what: str) -> None:
    """Raise EBADMSG unless each piece of `data`, read at `offset`, matches
    its CRC in `crcs` (None: the sender attached none)."""
    if crcs is None:
        return
    view = memoryview(data)
    cut = spans(offset, len(view))
    if len(crcs) != len(cut) or any(crc32c(view[start:stop]) != crc
                                    for (start, stop), crc in zip(cut, crcs)):
        raise _damaged(what)
