"""The mount's read cache (dfs mount --read-cache): what it holds is read again
without asking a chunk server, and it holds no more than it was given."""

import os

import pytest
import trio

from dfs.chunkio import ChunkIO
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
