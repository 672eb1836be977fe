"""Listing a folder through a mount: the kernel asks in pieces the size of the
reader's buffer, and the mount fetches each page of entries from the
metaserver once, not once per piece, without handing back what it has
changed since."""

import ctypes
import os
import time

import pytest

from conftest import Cluster
from dfs.dirstream import KEEP_SECONDS, DirStream
from faults import kill_server, restart_server
from test_metrics import free_port, scrape

pytestmark = pytest.mark.timeout(120)

_libc = ctypes.CDLL(None, use_errno=True)
# Little enough for a few dozen entries a request, as Go's and many tools' readers use.
SMALL_BUFFER = 4096


class Listing:
    """A folder read with getdents64 in pieces of `size` bytes, as readdir(3) does."""

    def __init__(self, path, size: int = SMALL_BUFFER):
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        self.buffer = ctypes.create_string_buffer(size)

    def piece(self) -> list[str]:
        """The names of the next piece; [] at the end."""
        got = _libc.getdents64(self.fd, self.buffer, len(self.buffer))
        if got < 0:
            raise OSError(ctypes.get_errno(), "getdents64")
        raw, names, pos = self.buffer.raw, [], 0
        while pos < got:
            length = int.from_bytes(raw[pos + 16:pos + 18], "little")
            names.append(raw[pos + 19:pos + length].split(b"\0", 1)[0].decode())
            pos += length
        return names

    def rest(self) -> list[str]:
        names = []
        while piece := self.piece():
            names += piece
        return names

    def close(self) -> None:
        os.close(self.fd)


def make_files(folder, count: int) -> set[str]:
    folder.mkdir()
    names = {f"f{i:05d}" for i in range(count)}
    for name in names:
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o644))
    return names


def test_a_listing_in_small_pieces_fetches_each_page_once(tmp_path):
    cluster = Cluster(tmp_path, chunkservers=1, replicas=1)
    try:
        cluster.up()
        port = free_port()
        layout = cluster.local.load()
        layout.extra_args["metrics_listen"] = f"127.0.0.1:{port}"
        cluster.local.save(layout)
        kill_server(cluster.local, "meta")
        # Back, serving its metrics, once its ready file is written (LocalCluster).
        restart_server(cluster.local, "meta")
        names = make_files(cluster.mnt / "many", 1500)

        def readdirs() -> float:
            return scrape(port).get('dfs_rpc_requests_total{op="readdir",result="ok"}', 0)

        mnt = cluster.mount()
        try:
            before = readdirs()
            listing = Listing(mnt / "many")
            try:
                listed = listing.rest()
            finally:
                listing.close()
            fetched = readdirs() - before
        finally:
            cluster.unmount(mnt)
        assert sorted(listed) == sorted(names | {".", ".."})
        # Pages of 512 (fs.READDIR_BATCH): 3, and a statahead's or two. One
        # per piece of the kernel's (about 40 here) before.
        assert fetched <= 6
    finally:
        cluster.teardown()


def test_a_name_removed_through_the_mount_is_not_listed_after(mnt):
    names = make_files(mnt / "removing", 600)
    listing = Listing(mnt / "removing")
    try:
        first = listing.piece()
        assert 2 < len(first) < 600
        # Removed while the rest of the page its first piece came from is kept.
        gone = sorted(names - set(first))[-10:]
        for name in gone:
            os.unlink(mnt / "removing" / name)
        rest = listing.rest()
    finally:
        listing.close()
    assert not set(gone) & set(rest)
    assert set(first) | set(rest) == (names - set(gone)) | {".", ".."}
    for name in gone:
        assert not os.path.exists(mnt / "removing" / name)


def test_what_is_kept_serves_only_the_next_piece_soon_after():
    stream = DirStream(ino=5, kernel_ino=5)
    entries = [(b"a", {}, 11), (b"b", {}, 12)]
    stream.keep(entries, 10, False, time.monotonic(), changes=3)
    assert stream.take(10, changes=3)[:2] == (entries, False)
    # Taken once only.
    assert stream.take(10, changes=3) is None
    stream.keep(entries, 10, True, time.monotonic(), changes=3)
    assert stream.take(11, changes=3) is None          # another offset
    stream.keep(entries, 10, True, time.monotonic(), changes=3)
    assert stream.take(10, changes=4) is None          # a change since
    stream.keep(entries, 10, True, time.monotonic() - KEEP_SECONDS - 0.1, changes=3)
    assert stream.take(10, changes=3) is None          # too old
