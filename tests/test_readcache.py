"""The mount's read cache (dfs mount --read-cache): what it holds is read again
without asking a chunk server, and it holds no more than it was given."""

import os

import pytest
import trio

from dfs.chunkio import ChunkIO
from dfs.openfile import READ_AHEAD_CACHE_BYTES, SEQUENTIAL_READS
from dfs.readcache import ReadCache
from inprocess import handlers

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
BLOCK = 64 * 1024
FILE = 24 * MiB
# Blocks read in this order are never one right after the other, so every read
# is a random one (a whole block kept in the cache), never read-ahead.
STRIDE = 7


class CountingChunkIO(ChunkIO):
    """The real chunk I/O, counting the reads it sends to chunk servers."""

    def __init__(self, secret: bytes):
        super().__init__(secret)
        self.reads = 0

    async def read(self, placement, offset, length):
        self.reads += 1
        return await super().read(placement, offset, length)


@pytest.mark.parametrize("cache_mib, second_pass_reads", [(16, FILE // BLOCK), (64, 0)])
def test_a_second_pass_of_random_reads_comes_from_the_cache_if_the_file_fits(
        shared_cluster, mnt, cache_mib, second_pass_reads):
    path = mnt / "blocks"
    data = os.urandom(FILE)
    path.write_bytes(data)
    ino = os.stat(path).st_ino
    blocks = FILE // BLOCK
    order = [(k * STRIDE) % blocks for k in range(blocks)]
    ref = shared_cluster.ref
    chunkio = CountingChunkIO(ref.secret)

    async def scenario():
        async with handlers(ref, chunkio, read_cache_bytes=cache_mib * MiB) as fs:
            fh = (await fs.open(ino, os.O_RDONLY, None)).fh
            try:
                passes = []
                for _ in range(2):
                    before = chunkio.reads
                    for i in order:
                        got = await fs.read(fh, i * BLOCK, BLOCK)
                        assert got == data[i * BLOCK:(i + 1) * BLOCK]
                    passes.append(chunkio.reads - before)
                    assert fs.read_cache.size <= cache_mib * MiB
            finally:
                await fs.release(fh)
        return passes

    first, second = trio.run(scenario)
    assert first == blocks
    assert second == second_pass_reads


def test_a_long_sequential_read_keeps_no_more_read_ahead_than_its_own_bound(shared_cluster,
                                                                         mnt):
    """A large cache is for random reads: a sequential read of a file larger than
    the read-ahead's bound leaves no more than that bound cached."""
    path = mnt / "long"
    size = READ_AHEAD_CACHE_BYTES + 16 * MiB
    data = os.urandom(size)
    path.write_bytes(data)
    ino = os.stat(path).st_ino

    async def scenario():
        async with handlers(shared_cluster.ref, read_cache_bytes=4 * size) as fs:
            fh = (await fs.open(ino, os.O_RDONLY, None)).fh
            try:
                most = most_ahead = 0
                for pos in range(0, size, MiB):
                    assert await fs.read(fh, pos, MiB) == data[pos:pos + MiB]
                    most = max(most, fs.read_cache.size)
                    most_ahead = max(most_ahead, fs.read_cache.ahead_size)
            finally:
                await fs.release(fh)
        return most, most_ahead

    most, most_ahead = trio.run(scenario)
    assert READ_AHEAD_CACHE_BYTES // 2 < most_ahead <= READ_AHEAD_CACHE_BYTES
    # The reads before the reader counted as sequential kept their 64 KiB blocks,
    # as random reads do.
    assert most <= READ_AHEAD_CACHE_BYTES + SEQUENTIAL_READS * MiB


def test_a_random_read_that_begins_where_the_last_ended_starts_no_read_ahead(
        shared_cluster, mnt):
    path = mnt / "random"
    data = os.urandom(FILE)
    path.write_bytes(data)
    ino = os.stat(path).st_ino
    chunkio = CountingChunkIO(shared_cluster.ref.secret)

    async def read_blocks(fs, fh, blocks):
        for i in blocks:
            assert await fs.read(fh, i * BLOCK, BLOCK) == data[i * BLOCK:(i + 1) * BLOCK]

    async def scenario():
        async with handlers(shared_cluster.ref, chunkio) as fs:
            fh = (await fs.open(ino, os.O_RDONLY, None)).fh
            try:
                # The second read begins where the first ended, by chance.
                await read_blocks(fs, fh, [40, 41, 7, 300])
                random_reads = (chunkio.reads, fs.read_cache.ahead_size)
                # Two in a row that each begin where the one before ended: a
                # sequential reader.
                await read_blocks(fs, fh, [8, 9, 10])
                await trio.sleep(1)
                return random_reads, fs.read_cache.ahead_size
            finally:
                await fs.release(fh)

    (reads, ahead), ahead_after = trio.run(scenario)
    assert (reads, ahead) == (4, 0)
    assert ahead_after > 0


def test_a_sequential_readers_reads_out_of_order_stay_in_its_read_ahead(shared_cluster, mnt):
    """The kernel sends the read a process waits for ahead of its own
    read-ahead, so a sequential reader's reads come out of order: those stay in
    read-ahead, not fetched again as blocks nor kept beside it."""
    path = mnt / "stream"
    data = os.urandom(FILE)
    path.write_bytes(data)
    ino = os.stat(path).st_ino
    chunkio = CountingChunkIO(shared_cluster.ref.secret)

    async def scenario():
        async with handlers(shared_cluster.ref, chunkio) as fs:
            fh = (await fs.open(ino, os.O_RDONLY, None)).fh
            try:
                # The third read in a row starts read-ahead of 3..10 MiB; the
                # next ones jump ahead into it and come back.
                for mib in [0, 1, 2, 5, 3, 4]:
                    got = await fs.read(fh, mib * MiB, MiB)
                    assert got == data[mib * MiB:(mib + 1) * MiB]
                await trio.sleep(1)
                return fs.read_cache.size - fs.read_cache.ahead_size, chunkio.reads
            finally:
                await fs.release(fh)

    blocks_held, reads = trio.run(scenario)
    # Only the reads before the reader counted as sequential kept blocks.
    assert blocks_held == SEQUENTIAL_READS * MiB
    # Those two, then segment 2 and read-ahead to 12 MiB (the read at 4 MiB, in
    # sequence again, ran it on), each read once.
    assert reads == SEQUENTIAL_READS + 11


def test_read_ahead_pieces_give_way_to_each_other_first():
    cache = ReadCache(capacity=4 * BLOCK, ahead_capacity=2 * BLOCK)
    piece = bytes(BLOCK)
    cache.put(1, BLOCK, 0, piece)
    for index in range(1, 4):
        cache.put(1, BLOCK, index, piece, ahead=True)
    # The oldest read-ahead piece went, not the older block.
    assert [cache.has(1, BLOCK, i) for i in range(4)] == [True, False, True, True]
    assert (cache.size, cache.ahead_size) == (3 * BLOCK, 2 * BLOCK)
    cache.get(1, BLOCK, 2)
    cache.put(1, BLOCK, 4, piece, ahead=True)
    assert [cache.has(1, BLOCK, i) for i in range(5)] == [True, False, True, False, True]
    for index in range(5, 7):
        cache.put(1, BLOCK, index, piece)
    # Past the whole capacity, the least recently used piece of any kind goes.
    assert [cache.has(1, BLOCK, i) for i in range(7)] == [False, False, True, False, True,
                                                          True, True]
    cache.drop_file(1)
    assert (cache.size, cache.ahead_size) == (0, 0)
