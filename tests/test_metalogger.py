"""A metalogger keeps an exact copy of the metadata on the side: on a real
cluster with real mounts, it copies the database, follows every commit, goes
on after a restart, copies again when it cannot, and a metaserver whose
database is lost comes back from its copy with everything acknowledged."""

import errno
import hashlib
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import msgpack
import pytest
import trio

from faults import (copy_matches, database_items, meta_call, start_metalogger, stop_process,
                    wait_for)
from test_metaserver_support import REPO

from csi_plugin.metaclient import MetaClient
from dfs.errors import DfsError
from metaserver.changelog import REPLY_BYTES, ChangeLog
from metaserver.metalogger import MetaLogger
from metaserver.store import DATABASES, PART_BYTES, Store, begin_history

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def metalogger(cluster, folder, *extra: str):
    """A dfs-metalogger process following `cluster`, stopped on leaving."""
    proc = start_metalogger(cluster.local, folder, *extra)
    try:
        yield proc
    finally:
        stop_process(proc)


def logged(folder, text: str) -> int:
    return (folder.parent / f"{folder.name}.log").read_text().count(text)


def replica_files(cluster) -> set:
    """The files the chunk servers hold, by path."""
    return {p for p in cluster.local.dir.glob("cs*/data/**/*") if p.is_file()}


def behind(cluster, name: str) -> int | None:
    listed = {m["name"]: m for m in meta_call(cluster.ref, "status")["metaloggers"]}
    return listed[name]["behind"] if name in listed else None


def test_a_metalogger_copies_follows_and_brings_a_lost_metaserver_back(cluster, tmp_path,
                                                                        request):
    mnt = cluster.mnt
    (mnt / "before").mkdir()
    for i in range(20):
        write(mnt / "before" / f"f{i}", os.urandom(1000 + i))
    folder = tmp_path / "logger"
    with metalogger(cluster, folder):
        wait_for(lambda: behind(cluster, "logger") == 0, 60, "the metalogger to catch up")
        assert logged(folder, "copied the metaserver's database") == 1

        # Every kind of change, one commit each, and one commit larger than a
        # part (a snapshot of files with 60 KiB attributes).
        (mnt / "dir" / "sub").mkdir(parents=True)
        for i in range(30):
            write(mnt / "dir" / f"x{i}", b"")
            os.setxattr(mnt / "dir" / f"x{i}", b"user.big", bytes([i]) * 60000)
        write(mnt / "dir" / "sub" / "data", os.urandom(3 * MiB))
        os.rename(mnt / "before" / "f0", mnt / "dir" / "moved")
        os.unlink(mnt / "before" / "f1")
        os.symlink("moved", mnt / "dir" / "link")
        os.link(mnt / "dir" / "moved", mnt / "dir" / "hard")
        os.truncate(mnt / "before" / "f2", 10)
        os.chmod(mnt / "before" / "f3", 0o600)
        cluster.dfs("quota", "set", *cluster.cli_args, "/dir", "--bytes", str(100 * MiB))
        cluster.dfs("snapshot", *cluster.cli_args, "/dir", "/snap")
        wait_for(lambda: copy_matches(cluster.local, folder), 60,
                 "the copy to equal the metaserver's database")

        # Written up to the moment the metaserver dies.
        write(mnt / "last", b"acknowledged just before the crash")
        wait_for(lambda: behind(cluster, "logger") == 0, 30, "the last commit to arrive")
        expected = {p.relative_to(mnt): sha(p) for p in mnt.rglob("*")
                    if p.is_file() and not p.is_symlink()}
        # The CSI controller's client, which has learned the cluster id.
        csi_meta = MetaClient(cluster.ref.meta, cluster.ref.secret)
        request.addfinalizer(csi_meta.close)
        assert csi_meta.lookup(1, "dir") is not None
        cluster.local.stop(cluster.local.dir / "meta", sig=signal.SIGKILL)

        # The metaserver's disk is lost, and it starts on an empty one. The
        # chunk servers refuse it rather than delete what it does not know,
        # and the metalogger keeps its copy rather than copy the empty one.
        data_dir = cluster.local.dir / "meta" / "data"
        subprocess.run(["rm", "-rf", str(data_dir)], check=True)
        chunk_files = replica_files(cluster)
        kept = database_items(folder / "meta.lmdb")
        cluster.local.start_metaserver(cluster.local.load())
        wait_for(lambda: logged(folder, "keeping this copy of the metadata") >= 1, 60,
                 "the metalogger to refuse the empty database")
        wait_for(lambda: (cluster.local.dir / "meta" / "log").read_text().count(
            "not one it can trust") >= 3, 60,
            "the chunk servers to be refused")
        assert meta_call(cluster.ref, "status")["chunkservers"] == []
        # The mount made on the old cluster will not act on the new one's inodes.
        with pytest.raises(OSError) as foreign:
            os.listdir(mnt / "dir")
        assert foreign.value.errno == errno.EREMCHG
        with pytest.raises(OSError):
            write(mnt / "into-the-void", b"refused")
        # Nor will the CSI controller make or remove volumes in it.
        with pytest.raises(DfsError) as controller:
            csi_meta.ensure_dir(1, "volumes", 0o755)
        assert controller.value.errno == errno.EREMCHG
        assert "another disk" in controller.value.message
        assert replica_files(cluster) == chunk_files
        assert database_items(folder / "meta.lmdb") == kept
        cluster.local.stop(cluster.local.dir / "meta")
    assert not (folder / "meta.lmdb.previous").exists()
    assert "may have started on an empty or another disk" in (tmp_path / "logger.log").read_text()

    # The metalogger's copy comes back.
    subprocess.run(["rm", "-rf", str(data_dir)], check=True)
    done = subprocess.run([sys.executable, "-m", "metaserver.restore", "--data-dir",
                           str(data_dir), "--hold", "3600", str(folder)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    cluster.local.start_metaserver(cluster.local.load())
    wait_for(lambda: sum(cs["alive"] for cs in meta_call(cluster.ref, "status")["chunkservers"])
             == 3, 30, "the chunk servers to register again")
    with cluster.extra_mount() as fresh:
        found = {p.relative_to(fresh): sha(p) for p in fresh.rglob("*")
                 if p.is_file() and not p.is_symlink()}
        assert found == expected
        assert os.readlink(fresh / "snap" / "link") == "moved"
        assert os.getxattr(fresh / "snap" / "x7", b"user.big") == bytes([7]) * 60000
        assert os.stat(fresh / "dir" / "moved").st_nlink == 2

    # The restored metaserver begins a new history: the metalogger copies again,
    # keeping its old copy aside, and follows the new one.
    with metalogger(cluster, folder):
        wait_for(lambda: logged(folder, "copied the metaserver's database") == 2, 60,
                 "the metalogger to copy the restored database")
        write(mnt / "after", b"after the restore")
        wait_for(lambda: copy_matches(cluster.local, folder), 60,
                 "the new copy to equal the restored database")
    assert (folder / "meta.lmdb.previous" / "data.mdb").exists()


def test_a_metalogger_resumes_across_restarts_and_copies_again_when_left_behind(
        cluster, tmp_path):
    mnt = cluster.mnt
    folder = tmp_path / "logger"
    with metalogger(cluster, folder):
        wait_for(lambda: behind(cluster, "logger") == 0, 60, "the metalogger to catch up")
    write(mnt / "while-stopped", b"a commit the metaserver still holds")
    with metalogger(cluster, folder):
        wait_for(lambda: copy_matches(cluster.local, folder), 60, "the metalogger to resume")

    # The metaserver keeps its records of commits in its database: a
    # metalogger that missed some goes on after a crash of the metaserver.
    write(mnt / "missed", b"a commit the metalogger reads after the crash")
    cluster.local.stop(cluster.local.dir / "meta", sig=signal.SIGKILL)
    cluster.local.start_metaserver(cluster.local.load())
    with metalogger(cluster, folder):
        wait_for(lambda: copy_matches(cluster.local, folder), 60, "the metalogger to resume")
    assert logged(folder, "copied the metaserver's database") == 1

    # With little room for them, the records of what it missed are gone: it
    # copies the database again.
    layout = cluster.local.load()
    layout.extra_args["log_keep_mib"] = 0.01
    cluster.local.save(layout)
    cluster.local.stop(cluster.local.dir / "meta")
    cluster.local.start_metaserver(layout)
    for i in range(20):
        write(mnt / f"missed-{i}", os.urandom(100))
    with metalogger(cluster, folder):
        wait_for(lambda: copy_matches(cluster.local, folder), 60, "a second copy")
    assert logged(folder, "copied the metaserver's database") == 2
    assert logged(folder, "is no longer held") == 1
    assert (folder / "meta.lmdb.previous" / "data.mdb").exists()

    # A metaserver put back to an older state of its own database (a disk
    # image from before) is behind the copy: the metalogger keeps its copy.
    meta = cluster.local.dir / "meta"
    cluster.local.stop(meta)
    subprocess.run(["cp", "-a", str(meta / "data" / "meta.lmdb"), str(tmp_path / "older")],
                   check=True)
    cluster.local.start_metaserver(layout)
    with metalogger(cluster, folder):
        write(mnt / "newer", b"what the older database lacks")
        wait_for(lambda: copy_matches(cluster.local, folder), 60, "the metalogger to follow")
        kept = database_items(folder / "meta.lmdb")
        cluster.local.stop(meta)
        subprocess.run(["rm", "-rf", str(meta / "data" / "meta.lmdb")], check=True)
        subprocess.run(["cp", "-a", str(tmp_path / "older"), str(meta / "data" / "meta.lmdb")],
                       check=True)
        cluster.local.start_metaserver(layout)
        wait_for(lambda: logged(folder, "it lost commits") >= 1, 60,
                 "the metalogger to refuse the older database")
    assert database_items(folder / "meta.lmdb") == kept


def test_a_copy_put_in_place_when_the_metalogger_crashed_is_finished_or_undone(tmp_path):
    def database_with(folder, value: bytes):
        store = Store(folder)
        store.write_now(lambda tx: (begin_history(tx), tx.put_xattr(1, b"user.v", value)))
        store.close()
        return folder / "meta.lmdb"

    def value_in(folder) -> bytes:
        store = Store(folder)
        try:
            return store.read(lambda tx: tx.xattr(1, b"user.v"))
        finally:
            store.close()

    def start_and_stop(folder) -> None:
        logger = MetaLogger("127.0.0.1:9", b"s" * 16, folder, "t")
        logger.store.close()
        os.close(logger.lock)

    # Crashed between moving the old copy away and moving the new one in.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    database_with(tmp_path / "src1", b"new").rename(crashed / "meta.lmdb.new")
    start_and_stop(crashed)
    assert value_in(crashed) == b"new" and not (crashed / "meta.lmdb.new").exists()

    # Crashed before the old copy was moved away: the new one is dropped.
    early = tmp_path / "early"
    database_with(early, b"old")
    database_with(tmp_path / "src2", b"new").rename(early / "meta.lmdb.new")
    start_and_stop(early)
    assert value_in(early) == b"old" and not (early / "meta.lmdb.new").exists()


def test_bad_requests_and_a_wrong_secret_get_clear_errors_and_serving_goes_on(
        cluster, tmp_path):
    ref = cluster.ref
    with pytest.raises(DfsError, match="another history") as stale:
        meta_call(ref, "log_read", follower="probe", history=12345, after=0, part=0, wait=0.0)
    assert stale.value.errno == errno.ESTALE
    history = meta_call(ref, "log_copy", follower="probe")["history"]
    with pytest.raises(DfsError, match="is no longer held"):
        meta_call(ref, "log_read", follower="probe", history=history, after=1 << 40, part=0,
                  wait=0.0)
    with pytest.raises(DfsError, match="no copy") as missing:
        meta_call(ref, "log_copy_read", follower="probe", name="../meta.lmdb/data.mdb",
                  offset=0, length=10)
    assert missing.value.errno == errno.ENOENT
    name = meta_call(ref, "log_copy", follower="probe")["name"]
    with pytest.raises(DfsError, match="length") as oversize:
        meta_call(ref, "log_copy_read", follower="probe", name=name, offset=0, length=1 << 30)
    assert oversize.value.errno == errno.EINVAL

    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not the cluster's secret\n")
    folder = tmp_path / "logger"
    with metalogger(cluster, folder, "--secret-file", str(wrong)):
        wait_for(lambda: logged(folder, "cannot follow the metaserver") >= 2, 30,
                 "the metalogger to report the refusal")
    assert "wrong cluster secret" in (tmp_path / "logger.log").read_text()
    assert database_items(folder / "meta.lmdb")[0] == (0, 0)

    # Not on a folder a metaserver serves.
    busy = subprocess.run([sys.executable, "-m", "metaserver.metalogger", "--meta", ref.meta,
                           "--data-dir", str(cluster.local.dir / "meta" / "data")],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, DFS_SECRET_FILE=str(cluster.local.dir /
                                                                   "secret")))
    assert busy.returncode == 2 and "in use by another" in busy.stderr
    assert meta_call(ref, "resolve", path=b"/")["ino"] == 1
    assert behind(cluster, "probe") is not None


async def read_all(changes, history: int, after: int) -> list:
    """Every part of commit `after` + 1, read as a metalogger does, checking
    that no reply grows past its bound."""
    parts = []
    while not parts or not parts[-1][2]:
        reply = (await changes.read("t", history, after, len(parts), 0.0))["parts"]
        assert len(reply) == 1 or sum(len(p[3]) for p in reply) <= REPLY_BYTES
        parts += [p for p in reply if p[0] == after + 1]
    return parts


def test_the_change_log_hands_out_commits_whole_and_says_when_it_cannot(tmp_path):
    """The metaserver's side on a real store: parts, waiting, limits, copies."""
    async def check():
        with trio.fail_after(60):
            await run(Store(tmp_path / "meta"))

    async def run(store):
        store.write_now(begin_history)
        changes = ChangeLog(store, 64 * MiB, tmp_path / "copies")
        changes.attach()
        history, start = changes.history, changes.seq
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run_writer)

            # With no metalogger around, commits are not kept.
            await store.write(lambda tx: tx.put_xattr(1, b"user.unread", b"0"))
            assert changes.seq == start + 1
            with pytest.raises(DfsError, match="no longer held"):
                await changes.read("t", history, start, 0, 0.0)
            start = changes.seq

            # A read at the newest commit waits for the next one.
            got = []

            async def wait_for_next():
                got.append(await changes.read("t", history, start, 0, 10.0))
            async with trio.open_nursery() as readers:
                readers.start_soon(wait_for_next)
                await trio.sleep(0.05)
                assert not got and changes.followers["t"].seq == start
                await store.write(lambda tx: tx.put_xattr(1, b"user.a", b"1"))
            assert [p[:3] for p in got[0]["parts"]] == [[start + 1, 0, True]]
            assert [db for db, *_ in msgpack.unpackb(got[0]["parts"][0][3])] == [
                DATABASES.index("xattrs"), DATABASES.index("counters")]

            # A commit larger than a part comes in parts, and a reply stops
            # inside it when it would grow too large.
            await store.write(lambda tx: [tx.put_xattr(1, b"user.%d" % i, bytes(60000))
                                          for i in range(80)])
            big = start + 2
            parts = await read_all(changes, history, start + 1)
            assert [p[:3] for p in parts] == [[big, i, i == len(parts) - 1]
                                              for i in range(len(parts))]
            assert len(parts) >= 4
            assert all(PART_BYTES <= len(p[3]) <= PART_BYTES + 70000 for p in parts[:-1])
            assert sum(1 for p in parts for db, *_ in msgpack.unpackb(p[3])
                       if db == DATABASES.index("xattrs")) == 80

            # A copy holds the position it was made at, and is shared while the
            # log reaches back to it.
            copy = await changes.copy()
            assert (copy.history, copy.seq) == (history, big)
            assert (await changes.copy()).name == copy.name
            assert changes.read_copy(copy.name, 0, 10) == (tmp_path / "copies" /
                                                           copy.name).read_bytes()[:10]
            store.stop()
        store.close()

        # The records outlive a restart of the metaserver, and it goes on
        # keeping them for the metalogger to come back.
        store = Store(tmp_path / "meta")
        changes = ChangeLog(store, 64 * MiB, tmp_path / "copies")
        changes.attach()
        assert changes.seq == big
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run_writer)
            await store.write(lambda tx: tx.put_xattr(1, b"user.after", b"restart"))
            await store.write(lambda tx: tx.put_xattr(1, b"user.after", b"again"))
            assert await read_all(changes, history, start + 1) == parts
            big += 2

            # Past its limit the log lets old commits go: reading from them
            # fails, reading on from the newest works, and a new copy is made.
            store.log_keep = 1
            changes.heard("t")
            await store.write(lambda tx: tx.put_xattr(1, b"user.b", b"2"))
            with pytest.raises(DfsError, match="no longer held") as gone:
                await changes.read("t", history, start, 0, 0.0)
            assert gone.value.errno == errno.ESTALE
            assert (await changes.read("t", history, big, 0, 0.0))["parts"][0][:3] == [
                big + 1, 0, True]
            with pytest.raises(DfsError, match="no longer held"):
                await changes.read("t", history, big - 1, 0, 0.0)
            await store.write(lambda tx: tx.put_xattr(1, b"user.c", b"3"))
            fresh = await changes.copy()
            assert fresh.name != copy.name and fresh.seq == big + 2
            assert not (tmp_path / "copies" / copy.name).exists()
            with pytest.raises(DfsError, match="replaced or removed"):
                changes.read_copy(copy.name, 0, 10)
            with pytest.raises(DfsError, match="another history"):
                await changes.read("t", history + 1, big + 2, 0, 0.0)
            store.stop()
        store.close()

    trio.run(check)
