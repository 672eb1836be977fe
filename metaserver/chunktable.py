"""Chunk maps and the chunk table inside a transaction: references and garbage."""

from .records import Chunk
from .store import Tx


def drop_location(tx: Tx, chunk_id: int, chunk: Chunk, csid: int) -> None:
    """Forget one replica; the server is told to delete it on its next heartbeat."""
    if csid in chunk.locations:
        chunk.locations.remove(csid)
    tx.add_garbage(csid, chunk_id)


def release_chunk(tx: Tx, chunk_id: int) -> None:
    """Drop one reference; a chunk nobody refers to becomes garbage on every holder."""
    chunk = tx.chunk(chunk_id)
    if chunk is None:
        return
    chunk.refs -= 1
    if chunk.refs > 0:
        tx.put_chunk(chunk_id, chunk)
        return
    for csid in chunk.locations:
        tx.add_garbage(csid, chunk_id)
    tx.delete_chunk(chunk_id)


def trim_file(tx: Tx, ino: int, size: int, chunk_size: int) -> int:
    """Unmap the chunks lying wholly at or beyond `size`; return how many."""
    first = -(-size // chunk_size)
    doomed = list(tx.chunks_of(ino, first))
    for index, chunk_id in doomed:
        tx.unmap_chunk(ino, index)
        release_chunk(tx, chunk_id)
    return len(doomed)


def stored_blocks(tx: Tx, ino: int, size: int, chunk_size: int) -> int:
    """512-byte units of a file's data that exist: the part of the file inside
    each mapped chunk, rounded up to 4 KiB; holes count nothing."""
    total = 0
    for index, _ in tx.chunks_of(ino):
        inside = min(size - index * chunk_size, chunk_size)
        if inside > 0:
            total += -(-inside // 4096) * 8
    return total
