"""File data: chunk boundaries, large files, random writes, replicas on disk."""

import errno
import hashlib
import mmap
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import trio

from conftest import TEST_CHUNK_SIZE
from dfs.ops import CHUNK, META
from dfs.rpc import Client
from faults import chunks_of, processes_mentioning, status, wait_for
from test_metrics import free_port, scrape

MiB = 1024 * 1024


def test_writes_across_chunk_boundaries(mnt):
    path = mnt / "boundary"
    payload = os.urandom(3 * TEST_CHUNK_SIZE + 12345)
    with open(path, "wb") as f:
        f.write(payload)
    with open(path, "rb") as f:
        assert f.read() == payload
        f.seek(TEST_CHUNK_SIZE - 10)
        assert f.read(20) == payload[TEST_CHUNK_SIZE - 10:TEST_CHUNK_SIZE + 10]
    with open(path, "r+b") as f:
        f.seek(2 * TEST_CHUNK_SIZE - 3)
        f.write(b"XXXXXX")
    expected = bytearray(payload)
    expected[2 * TEST_CHUNK_SIZE - 3:2 * TEST_CHUNK_SIZE + 3] = b"XXXXXX"
    with open(path, "rb") as f:
        assert f.read() == bytes(expected)


@pytest.mark.timeout(240)
def test_large_file_checksum(mnt):
    path = mnt / "large"
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(200):
            piece = block[i:] + block[:i]
            digest.update(piece)
            f.write(piece)
    assert os.stat(path).st_size == 200 * MiB
    os.system("sync; echo 3 > /proc/sys/vm/drop_caches")
    check = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(4 * MiB):
            check.update(piece)
    assert check.hexdigest() == digest.hexdigest()


def test_random_writes_match_a_model(mnt):
    rng = random.Random(7)
    path = mnt / "random"
    size = 3 * TEST_CHUNK_SIZE
    model = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
    with open(path, "r+b") as f:
        for _ in range(300):
            offset = rng.randrange(size - 70000)
            data = rng.randbytes(rng.choice([1, 512, 4096, 65536, 70000]))
            f.seek(offset)
            f.write(data)
            model[offset:offset + len(data)] = data
            if rng.random() < 0.1:
                f.flush()
                os.fsync(f.fileno())
    with open(path, "rb") as f:
        assert f.read() == bytes(model)


def test_scattered_small_writes_reach_another_mount_on_fsync(shared_cluster, mnt):
    """Small writes scattered over two chunks, more of them than one request
    carries and some overwriting others, are all on the replicas once fsync
    returns: a second mount sees them while the writer still has the file open."""
    rng = random.Random(11)
    path = mnt / "scattered"
    size = 2 * TEST_CHUNK_SIZE
    model = bytearray(rng.randbytes(size))
    path.write_bytes(model)
    with shared_cluster.extra_mount() as other, open(path, "r+b") as f:
        for round_ in range(3):
            for _ in range(1500 if round_ == 0 else 40):
                offset = rng.randrange(0, size - 4096) & ~511
                data = rng.randbytes(rng.choice([512, 4096]))
                f.seek(offset)
                f.write(data)
                model[offset:offset + len(data)] = data
            f.flush()
            os.fsync(f.fileno())
            assert (other / mnt.name / "scattered").read_bytes() == bytes(model)
    assert path.read_bytes() == bytes(model)


def test_fdatasync_makes_data_visible_to_another_mount(shared_cluster, mnt):
    """After fdatasync another mount reads the new bytes, even one that read the
    file before (its caches are dropped: the file is written quietly elsewhere)."""
    path = mnt / "log"
    path.write_bytes(bytes(1 << 20))
    before = os.stat(path).st_mtime_ns
    with shared_cluster.extra_mount() as other_mount, open(path, "r+b") as f:
        other = other_mount / mnt.name / "log"
        for i in range(20):
            f.seek(i * 4096)
            f.write(b"%04d" % i * 1024)
            f.flush()
            os.fdatasync(f.fileno())
            with open(other, "rb") as g:
                g.seek(i * 4096)
                assert g.read(4096) == b"%04d" % i * 1024
        grown = os.fstat(f.fileno()).st_size + 5000
        f.seek(grown - 4)
        f.write(b"tail")
        f.flush()
        os.fdatasync(f.fileno())
        # A growing fdatasync records the size before it returns.
        with shared_cluster.extra_mount() as fresh:
            assert os.stat(fresh / mnt.name / "log").st_size == grown
    with shared_cluster.extra_mount() as fresh:
        log = fresh / mnt.name / "log"
        assert os.stat(log).st_mtime_ns > before
        assert log.read_bytes()[:4096 * 20] == b"".join(b"%04d" % i * 1024 for i in range(20))


def test_quiet_fdatasync_records_its_mtime_within_a_second(shared_cluster, mnt):
    """An fdatasync that does not grow the file skips the metaserver once it
    knows the file is written quietly: this mount shows the new mtime at once,
    another mount within about a second, and close records it for good."""
    path = mnt / "redo"
    path.write_bytes(bytes(128 * 1024))
    before = os.stat(path).st_mtime_ns
    with shared_cluster.extra_mount() as other_mount:
        other = other_mount / mnt.name / "redo"
        with open(path, "r+b", buffering=0) as f:
            commits = status(shared_cluster.ref)["commits"]
            for i in range(20):
                f.seek(i * 4096)
                f.write(b"%04d" % i * 1024)
                os.fdatasync(f.fileno())
            # The first marks the file as written quietly; the background
            # recording may add a few more.
            assert status(shared_cluster.ref)["commits"] - commits < 10
            written = os.fstat(f.fileno()).st_mtime_ns
            assert written > before
            wait_for(lambda: os.stat(other).st_mtime_ns == written, 10,
                     "the other mount to see the new mtime")
            f.seek(0)
            f.write(b"last")
        assert os.stat(other_mount / mnt.name / "redo").st_size == 128 * 1024
        with open(other, "rb") as g:
            assert g.read(4) == b"last"
            assert g.read(4092 + 4096)[4092:] == b"0001" * 1024


def _uncached_read(f, offset: int, length: int) -> bytes:
    """Read past the kernel's page cache, so the mount's own cache answers."""
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    f.seek(offset)
    return f.read(length)


def test_cached_blocks_follow_writes_holes_and_other_mounts(shared_cluster, mnt):
    path = mnt / "blocks"
    data = bytearray(os.urandom(100_000))
    path.write_bytes(data)
    with shared_cluster.extra_mount() as other_mount, open(path, "r+b", buffering=0) as f:
        other = other_mount / mnt.name / "blocks"
        for offset in (70_000, 5_000, 99_000, 70_500):
            assert _uncached_read(f, offset, 1000) == data[offset:offset + 1000]
        # Growth past a hole: the short last block cached before must not hide the zeros.
        f.seek(200_000)
        f.write(b"tail")
        data += bytes(100_000) + b"tail"
        assert _uncached_read(f, 90_000, 20_000) == data[90_000:110_000]
        f.seek(66_000)
        f.write(b"X" * 100)
        data[66_000:66_100] = b"X" * 100
        assert _uncached_read(f, 65_900, 300) == data[65_900:66_200]
        os.fsync(f.fileno())
        # Another mount's change shows at this mount's next open.
        with open(other, "r+b") as g:
            g.seek(10_000)
            g.write(b"Y" * 10)
        data[10_000:10_010] = b"Y" * 10
        with open(path, "rb", buffering=0) as again:
            assert _uncached_read(again, 9_990, 100) == data[9_990:10_090]
    assert path.read_bytes() == bytes(data)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(120)
def test_many_files_written_at_once_hold_bounded_memory(shared_cluster, mnt):
    """A hundred files open at once, each with 3.5 MiB written and not yet sent,
    would hold 350 MiB in the mount; what waits unsent is bounded for the whole
    mount (MAX_UNSENT_BYTES, 64 MiB), so the mount stays far below that."""
    # Its write pipeline is the largest of any mount: freed for the tests after.
    with shared_cluster.extra_mount() as mount:
        folder = mount / mnt.name
        piece = os.urandom(512 * 1024)
        files = [open(folder / f"f{i}", "wb", buffering=0) for i in range(100)]
        try:
            for f in files:
                for _ in range(7):
                    f.write(piece)
            [pid] = processes_mentioning(str(mount))
            peak = _peak_rss_mib(pid)
        finally:
            for f in files:
                f.close()
        assert peak < 250, f"the mount reached {peak:.0f} MiB"
        for i in (0, 57, 99):
            assert (folder / f"f{i}").read_bytes() == piece * 7


def test_posix_fallocate_moves_the_end_without_storing_zeros(shared_cluster, mnt):
    """dfs has no fallocate, so glibc writes a zero byte every 4 KiB past the
    end instead: those writes reach no replica, yet the file reads as zeros
    there (also where a truncation cut data away), and a zero byte written
    inside the file still overwrites what was there."""
    path = mnt / "grown"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 5000)
        os.ftruncate(fd, 4000)
        os.posix_fallocate(fd, 0, 3 * MiB)
        os.pwrite(fd, b"\0", 10)
        os.pwrite(fd, b"y" * 100, 2 * MiB)
    finally:
        os.close(fd)
    expected = bytearray(3 * MiB)
    expected[:4000] = b"x" * 4000
    expected[10] = 0
    expected[2 * MiB:2 * MiB + 100] = b"y" * 100
    assert path.read_bytes() == expected
    with shared_cluster.extra_mount() as other:
        assert (other / path.relative_to(shared_cluster.mnt)).read_bytes() == expected
    chunks = chunks_of(shared_cluster.ref, f"/{path.relative_to(shared_cluster.mnt)}",
                       TEST_CHUNK_SIZE)
    assert [chunk["chunk"] != 0 for chunk in chunks] == [True, False, True]


def test_read_your_writes_before_close(mnt):
    path = mnt / "ryw"
    with open(path, "w+b") as f:
        f.write(b"a" * 100_000)
        f.flush()
        f.seek(50_000)
        assert f.read(10) == b"a" * 10
        assert os.stat(path).st_size == 100_000


def test_replicas_hold_the_data(shared_cluster, mnt):
    """Every chunk of a synced file is on two chunk servers, each with every byte."""
    payload = os.urandom(2 * TEST_CHUNK_SIZE)
    with open(mnt / "replicated", "wb") as f:
        f.write(payload)
        os.fsync(f.fileno())
    ref = shared_cluster.ref

    async def read_every_replica():
        meta = Client(ref.meta, ref.secret, META)
        ino = (await meta.call("resolve", path=f"/{mnt.name}/replicated".encode()))["ino"]
        copies = []
        for index in range(2):
            where = await meta.call("chunk_read", ino=ino, index=index)
            for _csid, addr in where["servers"]:
                server = Client(addr, ref.secret, CHUNK)
                reply = await server.call("read", chunk=where["chunk"],
                                          version=where["version"], offset=0,
                                          length=TEST_CHUNK_SIZE)
                copies.append((index, addr, reply["data"]))
                await server.aclose()
        await meta.aclose()
        return copies

    copies = trio.run(read_every_replica)
    for index in range(2):
        replicas = [(addr, data) for i, addr, data in copies if i == index]
        assert len({addr for addr, _ in replicas}) == 2, "two distinct chunk servers"
        piece = payload[index * TEST_CHUNK_SIZE:(index + 1) * TEST_CHUNK_SIZE]
        assert all(data == piece for _, data in replicas)


@pytest.mark.timeout(120)
def test_reads_beside_a_writer_of_the_same_file_see_its_writes_and_never_hang(cluster):
    """A database reads pages of a tablespace while another of its threads
    writes others. Each read sees every write that returned before it began
    (a fetch that ran between a write and the write's landing on the replicas
    once left the old bytes in the read cache), and waits for those writes
    only (a read that waited for the file's writes to stop, while the writer
    went on, once hung for ever: MariaDB, 20261127-052652)."""
    mnt = cluster.mount()
    path = mnt / "tablespace"
    page, pages = 16 * 1024, 64
    path.write_bytes(bytes(page * pages))
    written = [0] * pages   # the last version of each page whose write returned
    stop = threading.Event()
    failures: list[str] = []
    reads = 0

    def writer():
        fd = os.open(path, os.O_WRONLY)
        try:
            version = 0
            while not stop.is_set():
                version += 1
                # Pages far apart, so that every write sends the batch before it.
                for n in random.sample(range(pages), 8):
                    os.pwrite(fd, version.to_bytes(8, "little") * (page // 8), n * page)
                    written[n] = version
        finally:
            os.close(fd)

    def reader():
        nonlocal reads
        # O_DIRECT: every read reaches the mount, as a database's do.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, page)
        try:
            while not stop.is_set():
                n = random.randrange(pages)
                floor = written[n]
                os.preadv(fd, [buf], n * page)
                seen = int.from_bytes(buf[:8], "little")
                if seen < floor:
                    failures.append(f"page {n}: read version {seen} after {floor} was written")
                reads += 1
        finally:
            buf.close()
            os.close(fd)

    threads = [threading.Thread(target=writer, daemon=True),
               threading.Thread(target=reader, daemon=True),
               threading.Thread(target=reader, daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(6)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    hung = [t for t in threads if t.is_alive()]
    if hung:
        # Release the stuck system calls: with its server gone the kernel fails them.
        for pid in processes_mentioning(str(mnt)):
            os.kill(pid, signal.SIGKILL)
        for thread in hung:
            thread.join(timeout=10)
    assert not hung, "a read or write never returned"
    assert not failures, failures[:5]
    assert reads > 100


def test_a_new_small_file_writes_without_asking_for_quota(cluster):
    """The grant that comes with a new file covers a small file's first write:
    no `reserve` of its own. A write past it still asks, and a full quota
    still refuses it."""
    port = free_port()
    local = cluster.local
    layout = local.load()
    layout.extra_args["metrics_listen"] = f"127.0.0.1:{port}"
    local.stop(local.dir / "meta")
    local.start_metaserver(layout)
    wait_for(lambda: status(cluster.ref)["chunkservers"]
             and all(cs["alive"] for cs in status(cluster.ref)["chunkservers"]),
             30, "the chunk servers to register again")

    for i in range(20):
        (cluster.mnt / f"small{i}").write_bytes(b"x" * 4096)
    samples = scrape(port)
    assert samples['dfs_rpc_requests_total{op="mknod",result="ok"}'] >= 20
    assert not any(name.startswith('dfs_rpc_requests_total{op="reserve"') for name in samples)

    vol = cluster.mnt / "vol"
    vol.mkdir()
    cluster.dfs("quota", "set", *cluster.cli_args, "/vol", "--bytes", "1M")
    with pytest.raises(OSError) as info:
        (vol / "big").write_bytes(b"y" * (2 << 20))
    assert info.value.errno == errno.EDQUOT
    assert scrape(port)['dfs_rpc_requests_total{op="reserve",result="EDQUOT"}'] >= 1
