"""Backups of the metadata on a real metaserver: the ops that take, list and
read them, periodic backups, bad requests, the data folder's lock, and what a
restore (dfs-metaserver-restore, as a process) does to ids, epochs and chunk
versions the backup never knew."""

import errno
import hashlib
import os
import subprocess
import sys
import time

import pytest
import trio

from dfs.framing import MAX_DATA
from faults import stop_process, tiny_disk
from metaserver.restore import SPAN, check_backup
from test_metaserver_support import (REPO, ROOT, error_of, make_dir, make_file, meta,
                                     meta_factory, new_session)

pytestmark = pytest.mark.timeout(120)
__all__ = ["meta", "meta_factory"]


async def fetch(c, name: str) -> bytes:
    """The whole backup `name`, read the way `dfs backup get` does."""
    data = b""
    while True:
        piece = (await c.call("backup_read", name=name, offset=len(data), length=MAX_DATA))["data"]
        if not piece:
            return data
        data += piece


def restore(meta, backup, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaserver.restore", "--data-dir",
                           str(meta.data_dir), *flags, str(backup)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_backup_is_listed_read_whole_and_matches_its_checksum(meta, tmp_path):
    async def body(c):
        await make_dir(c, ROOT, b"kept")
        taken = await c.call("backup_take")
        await make_dir(c, ROOT, b"after")
        listed = (await c.call("backup_list"))["backups"]
        return taken, listed, await fetch(c, taken["name"])

    taken, listed, data = meta.run(body)
    assert listed == [taken]
    assert len(data) == taken["size"]
    assert hashlib.sha256(data).hexdigest() == taken["sha256"]
    assert (meta.data_dir / "backups" / (taken["name"] + ".sha256")).read_text() == \
        f"{taken['sha256']}  {taken['name']}\n"
    copy = tmp_path / taken["name"]
    copy.write_bytes(data)
    # The root and `kept`; `after` came later.
    assert check_backup(copy)["inodes"] == 2


def test_bad_backup_requests_get_clear_errors_and_the_server_serves_on(meta):
    async def body(c):
        name = (await c.call("backup_take"))["name"]
        gone = name.removesuffix(".lmdb") + "9.lmdb"
        return [await error_of(c.call("backup_read", name=bad, offset=0, length=10))
                for bad in ("../meta.lock", "meta.lock", "/etc/passwd")] + [
            await error_of(c.call("backup_read", name=gone, offset=0, length=10)),
            await error_of(c.call("backup_read", name=name, offset=0, length=0)),
            await error_of(c.call("backup_read", name=name, offset=0, length=MAX_DATA + 1)),
            await error_of(c.call("backup_read", name=name, offset=-1, length=10)),
            len((await c.call("backup_read", name=name, offset=1 << 40, length=10))["data"]),
            (await c.call("status"))["backup"]["name"] == name,
        ]

    assert meta.run(body) == [errno.EINVAL] * 3 + [errno.ENOENT] + [errno.EINVAL] * 3 + [0, True]


def test_backups_are_taken_every_interval_and_only_the_newest_kept(meta_factory):
    meta = meta_factory(backup_interval=0.5, backup_keep=2)
    folder = meta.data_dir / "backups"

    async def body(c):
        for i in range(6):
            await make_dir(c, ROOT, b"d%d" % i)
            await trio.sleep(0.3)
        # Backups go on being taken: soon one holds the last folder made too.
        deadline = time.monotonic() + 20
        while True:
            newest = (await c.call("backup_list"))["backups"][-1]
            if check_backup(folder / newest["name"])["inodes"] == 7:
                return
            assert time.monotonic() < deadline, "no backup took in the last change"
            await trio.sleep(0.2)

    meta.run(body)
    meta.stop()
    on_disk = sorted(p.name for p in folder.iterdir())
    kept = [name for name in on_disk if name.endswith(".lmdb")]
    assert len(kept) == 2
    assert on_disk == sorted(kept + [name + ".sha256" for name in kept])


def test_a_backup_folder_that_is_full_or_no_folder_is_reported_then_recovers(meta_factory,
                                                                              tmp_path):
    with tiny_disk(tmp_path / "full", "16k") as full:
        meta = meta_factory(backup_dir=full / "backups", backup_interval=0)

        async def body(c):
            for i in range(300):   # a database larger than the folder's room
                await make_dir(c, ROOT, b"folder-with-a-long-name-%04d" % i)
            no_room = await error_of(c.call("backup_take"))
            reported = (await c.call("status"))["backup_error"]
            left = os.listdir(full / "backups")
            subprocess.run(["mount", "-o", "remount,size=16m", str(full)], check=True)
            taken = await c.call("backup_take")
            return no_room, reported, left, taken, await c.call("status")

        no_room, reported, left, taken, status = meta.run(body)
        assert no_room == errno.ENOSPC and "no room for a backup" in reported
        assert left == []
        assert status["backup"] == taken and status["backup_error"] is None
        assert check_backup(full / "backups" / taken["name"])["inodes"] == 301

        blocked = tmp_path / "a-file"
        blocked.write_text("a file where the backup folder should be")
        other = meta_factory(backup_dir=blocked, backup_interval=0)
        assert other.run(lambda c: error_of(c.call("backup_take"))) == errno.EEXIST
        assert "cannot write a backup" in other.run(lambda c: c.call("status"))["backup_error"]


def test_a_second_metaserver_on_the_same_folder_is_refused(meta):
    second = subprocess.run(
        [sys.executable, "-m", "metaserver.main", "--listen", "127.0.0.1:0", "--data-dir",
         str(meta.data_dir), "--secret-file", str(meta.secret_file)],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert f"in use by another metaserver (pid {meta.proc.pid})" in second.stderr
    refused = restore(meta, meta.data_dir / "nothing.lmdb")
    assert refused.returncode == 1 and "in use by another metaserver" in refused.stderr
    assert meta.run(lambda c: c.call("getattr", ino=ROOT))["ino"] == ROOT


def test_a_restore_never_hands_out_an_id_epoch_or_version_twice(meta_factory):
    meta = meta_factory(lease_seconds=0.5)
    meta.start_chunkserver("cs1")

    async def before(c):
        sid = await new_session(c)
        vol = (await make_dir(c, ROOT, b"vol"))["ino"]
        ino = (await make_file(c, vol, b"f", session=sid))["ino"]
        old_epoch = (await c.call("fence", ino=vol))["epoch"]
        first = await c.call("chunk_write", ino=ino, index=0, session=sid)
        backup = await c.call("backup_take")
        # Lost with the metaserver's disk: a newer version, a newer epoch, new ids.
        await trio.sleep(0.6)
        second = await c.call("chunk_write", ino=ino, index=0, session=sid)
        lost_epoch = (await c.call("fence", ino=vol))["epoch"]
        lost_ino = (await make_file(c, vol, b"g", session=sid))["ino"]
        return vol, ino, old_epoch, lost_epoch, lost_ino, first, second, backup

    vol, ino, old_epoch, lost_epoch, lost_ino, first, second, backup = meta.run(before)
    assert second["version"] > first["version"] and lost_epoch == old_epoch + 1
    meta.stop()
    done = restore(meta, meta.data_dir / "backups" / backup["name"])
    assert done.returncode == 0, done.stderr
    assert "checksum checked" in done.stdout
    meta.start(meta.addr)

    async def after(c):
        sid = await new_session(c)
        assert sid > SPAN
        # The chunk server registers again and its newer version wins.
        deadline = time.monotonic() + 15
        while (await c.call("chunk_read", ino=ino, index=0))["version"] != second["version"]:
            assert time.monotonic() < deadline, "the newer replica was never taken in"
            await trio.sleep(0.2)
        new_ino = (await make_file(c, vol, b"h", session=sid))["ino"]
        assert new_ino > lost_ino
        # Past the restart's lease grace, the next version is above every lost one.
        await trio.sleep(0.6)
        moved = await c.call("chunk_write", ino=ino, index=0, session=sid)
        assert moved["version"] == SPAN
        # A mount of the lost epoch has it adopted; the restored epoch is fenced out.
        newer = (await c.call("session_open", host="b", mountpoint="/v", pid=1,
                              fence=[vol, lost_epoch]))["session"]
        refused = await error_of(c.call("session_open", host="a", mountpoint="/v", pid=1,
                                        fence=[vol, old_epoch]))
        made = await error_of(make_file(c, vol, b"by-b", session=newer, writer=newer))
        # A fence now hands out an epoch no lost one can equal.
        fenced = (await c.call("fence", ino=vol))["epoch"]
        return refused, made, fenced, (await c.call("status"))["restore"]

    refused, made, fenced, restored = meta.run(after)
    assert (refused, made) == (errno.EROFS, 0)
    assert fenced == SPAN
    assert restored["hold_until"] > time.time() + 6 * 86400


def test_a_chunk_server_registers_again_with_each_metaserver_start(meta):
    """So that what it holds is matched against the table as it is now, which
    a restore may have changed, even if its heartbeats never failed."""
    async def register(c, csid=None):
        return (await c.call("cs_register", csid=csid, addr="127.0.0.1:1", capacity=1 << 30,
                             used=0, chunks=[]))["csid"]

    csid = meta.run(register)
    assert meta.run(lambda c: c.call("cs_heartbeat", csid=csid, capacity=1 << 30,
                                     used=0))["delete"] == []
    meta.restart()
    assert meta.run(lambda c: error_of(c.call("cs_heartbeat", csid=csid, capacity=1 << 30,
                                              used=0))) == errno.ENOENT
    assert meta.run(register, csid) == csid


def test_after_a_restore_no_replica_is_handed_out_before_the_servers_register(meta_factory):
    """The backup lists two replicas at one version; one of them has since
    moved on alone. Its server registering last must not let the other,
    older one be read meanwhile."""
    meta = meta_factory()
    meta.start_chunkserver("cs1")
    meta.start_chunkserver("cs2")

    async def before(c):
        while sum(s["alive"] for s in (await c.call("status"))["chunkservers"]) < 2:
            await trio.sleep(0.1)
        sid = await new_session(c)
        ino = (await make_file(c, ROOT, b"f", session=sid))["ino"]
        first = await c.call("chunk_write", ino=ino, index=0, session=sid)
        backup = await c.call("backup_take")
        # cs2 failed this client: the chunk moves on, on cs1 alone.
        cs2 = [addr for csid, addr in first["servers"] if csid == 2]
        moved = await c.call("chunk_write", ino=ino, index=0, session=sid, failed=cs2)
        return ino, first, moved, backup

    ino, first, moved, backup = meta.run(before)
    assert len(first["servers"]) == 2 and moved["version"] > first["version"]
    assert [csid for csid, _ in moved["servers"]] == [1]
    meta.stop()
    stop_process(meta.chunkservers[0])
    assert restore(meta, meta.data_dir / "backups" / backup["name"]).returncode == 0
    meta.start(meta.addr)

    async def after(c):
        async with trio.open_nursery() as nursery:
            async def bring_back_cs1():
                await trio.sleep(1.5)
                await trio.to_thread.run_sync(meta.start_chunkserver, "cs1")
            nursery.start_soon(bring_back_cs1)
            return await c.call("chunk_read", ino=ino, index=0)

    read = meta.run(after)
    assert read["version"] == moved["version"]
    assert [csid for csid, _ in read["servers"]] == [1]
