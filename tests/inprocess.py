"""A mount's request handlers (DfsFS) run inside the test's own trio loop, on a
real cluster, without a FUSE session: for what only the handlers can show, such
as the order of their steps or what they ask of the chunk servers."""

from contextlib import asynccontextmanager

import trio

from dfs.chunkio import ChunkIO
from dfs.config import ClusterRef
from dfs.fs import DfsFS
from dfs.session import MetaLink


@asynccontextmanager
async def handlers(ref: ClusterRef, chunkio: ChunkIO | None = None, **options):
    """A DfsFS with its own metaserver session, closed with everything it
    started however the block ends; `options` go to DfsFS."""
    meta = MetaLink(ref.meta, ref.secret, "in-process test")
    chunkio = chunkio or ChunkIO(ref.secret)
    try:
        await meta.open_session()
        root = (await meta.call("resolve", path=b"/"))["ino"]
        async with trio.open_nursery() as nursery:
            fs = DfsFS(meta, chunkio, root, nursery, **options)
            try:
                yield fs
            finally:
                with trio.CancelScope(shield=True):
                    await fs.close()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await meta.aclose()
            await chunkio.aclose()
