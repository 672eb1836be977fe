"""Losing the metaserver's database and coming back from a backup, on a real
cluster with real mounts: `dfs backup now` and `get`, dfs-metaserver-restore,
and what the files look like afterwards."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from faults import chunks_of, meta_call, replica_paths, wait_for
from test_metaserver_support import REPO

from metaserver.restore import GAP, RESTORES, prepare
from metaserver.store import CLUSTER_ID, Store

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(path, data: bytes, offset: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_restored_cluster_serves_the_backup_with_the_newest_data(cluster, tmp_path):
    mnt, ref = cluster.mnt, cluster.ref
    (mnt / "dir").mkdir()
    write(mnt / "dir" / "small", b"hello")
    write(mnt / "big", os.urandom(3 * MiB))
    write(mnt / "renamed", b"old name")

    taken = cluster.dfs("backup", "now", *cluster.cli_args).stdout
    listed = json.loads(cluster.dfs("backup", "ls", *cluster.cli_args, "--json").stdout)
    assert [b["name"] for b in listed] == [taken.split()[0]]
    fetched = cluster.dfs("backup", "get", *cluster.cli_args, "latest", str(tmp_path)).stdout
    backup = tmp_path / listed[0]["name"]
    assert "checksum verified" in fetched and sha(backup) == listed[0]["sha256"]

    # What the backup does not know: an overwrite in place, a new file, a rename.
    write(mnt / "big", os.urandom(MiB), offset=MiB)
    newest = sha(mnt / "big")
    write(mnt / "later", os.urandom(MiB))
    later_chunks = [c["chunk"] for c in chunks_of(ref, "/later", 1 << 20)]
    os.rename(mnt / "renamed", mnt / "moved")

    # The database is lost; the backup comes back in its place.
    cluster.local.stop(cluster.local.dir / "meta")
    data_dir = cluster.local.dir / "meta" / "data"
    done = subprocess.run([sys.executable, "-m", "metaserver.restore", "--data-dir",
                           str(data_dir), "--hold", "3600", str(backup)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(list(data_dir.glob("meta.lmdb.before-restore-*"))) == 1
    cluster.local.start_metaserver(cluster.local.load())
    wait_for(lambda: sum(cs["alive"] for cs in meta_call(ref, "status")["chunkservers"]) == 3,
             30, "the chunk servers to register again")

    # A fresh mount reads what the backup holds, with the newest data in it.
    with cluster.extra_mount() as fresh:
        assert sorted(os.listdir(fresh)) == ["big", "dir", "renamed"]
        assert (fresh / "dir" / "small").read_bytes() == b"hello"
        assert (fresh / "renamed").read_bytes() == b"old name"
        assert sha(fresh / "big") == newest

        # The mount made before the restore goes on, with ids never used before.
        write(mnt / "after", b"written after the restore")
        assert (fresh / "after").read_bytes() == b"written after the restore"
        after_chunk = chunks_of(ref, "/after", 1 << 20)[0]["chunk"]
        assert after_chunk not in later_chunks and after_chunk > max(later_chunks)

    # The chunks of the file made after the backup are kept, even by a repair.
    report = subprocess.run(
        [sys.executable, "-m", "dfs.cli", "fsck", *cluster.cli_args, "--repair", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    kept = [p for p in json.loads(report.stdout)["problems"] if p["kind"] == "orphan"]
    assert set(later_chunks) <= {p["chunk"] for p in kept}
    assert not any(p["repaired"] for p in kept) and "kept until" in kept[0]["detail"]
    for p in kept:
        server = cluster.local.dir / f"cs{p['csid']}" / "data"
        data = replica_paths(server, p["chunk"])[0]
        # Besides them: the empty chunks made ahead for new files before the
        # restore (chunkpool.py), unknown to the database as theirs are.
        assert data.exists() and (p["chunk"] in later_chunks or data.stat().st_size == 0)
    assert "metadata restored from a backup" in cluster.dfs("status", *cluster.cli_args).stdout


def test_a_damaged_backup_is_refused_and_the_database_kept(cluster, tmp_path):
    none_yet = cluster.dfs("backup", "get", *cluster.cli_args, "latest", str(tmp_path),
                           check=False)
    assert none_yet.returncode == 1 and "no backups yet" in none_yet.stderr
    name = cluster.dfs("backup", "now", *cluster.cli_args).stdout.split()[0]
    backup = tmp_path / name
    cluster.dfs("backup", "get", *cluster.cli_args, name, str(backup))
    damaged = bytearray(backup.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    backup.write_bytes(bytes(damaged))
    not_lmdb = tmp_path / "notes.lmdb"
    not_lmdb.write_bytes(b"not a database" * 1000)

    data_dir = cluster.local.dir / "meta" / "data"
    refused_busy = subprocess.run(
        [sys.executable, "-m", "metaserver.restore", "--data-dir", str(data_dir),
         str(backup)], cwd=REPO, capture_output=True, text=True, timeout=60)
    cluster.local.stop(cluster.local.dir / "meta")
    before = sha(data_dir / "meta.lmdb" / "data.mdb")
    refused = [subprocess.run([sys.executable, "-m", "metaserver.restore", "--data-dir",
                               str(data_dir), str(bad)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
               for bad in (backup, not_lmdb, tmp_path / "missing.lmdb")]
    assert refused_busy.returncode == 1 and "in use by another metaserver" in refused_busy.stderr
    assert [r.returncode for r in refused] == [1, 1, 1]
    assert "does not match its checksum" in refused[0].stderr
    assert "not an LMDB database" in refused[1].stderr
    assert "no such file" in refused[2].stderr
    assert sha(data_dir / "meta.lmdb" / "data.mdb") == before
    assert not list(data_dir.glob("meta.lmdb.before-restore-*"))

    cluster.local.start_metaserver(cluster.local.load())
    assert meta_call(cluster.ref, "resolve", path=b"/")["ino"] == 1


def test_a_restore_counts_on_from_the_database_it_replaces(tmp_path):
    """A backup older than the database it replaces (one set aside by an
    earlier restore, or from before cluster ids) hands out no id twice and
    keeps the cluster's id."""
    store = Store(tmp_path)
    try:
        store.write_now(lambda tx: tx.put_counter("inode", 50))
        replaced = {"inode": 1_000_000, "chunk": 7, RESTORES: 3, CLUSTER_ID: 77}
        assert store.write_now(lambda tx: prepare(tx, 0.0, 0.0, replaced)) == 4
        counters = store.read(lambda tx: {n: tx.counter(n)
                                          for n in ("inode", "chunk", CLUSTER_ID)})
        assert counters == {"inode": 1_000_000 + GAP, "chunk": 7 + GAP, CLUSTER_ID: 77}
        # A backup with a cluster id of its own keeps it.
        store.write_now(lambda tx: tx.put_counter(CLUSTER_ID, 5))
        store.write_now(lambda tx: prepare(tx, 0.0, 0.0, replaced))
        assert store.read(lambda tx: tx.counter(CLUSTER_ID)) == 5
    finally:
        store.close()


def test_chunk_servers_refuse_an_older_image_of_the_database_and_its_restore_keeps_chunks(
        cluster, tmp_path):
    mnt, ref, local = cluster.mnt, cluster.ref, cluster.local
    meta = local.dir / "meta"
    database = meta / "data" / "meta.lmdb" / "data.mdb"

    def restart_metaserver():
        local.stop(meta)
        local.start_metaserver(local.load())
        wait_for(lambda: sum(cs["alive"] for cs in meta_call(ref, "status")["chunkservers"])
                 == 3, 30, "the chunk servers to register")

    write(mnt / "old", b"in the image")
    local.stop(meta)
    image = tmp_path / "image.mdb"
    image.write_bytes(database.read_bytes())
    restart_metaserver()
    write(mnt / "new", os.urandom(2 * MiB))
    new_chunks = {c["chunk"] for c in chunks_of(ref, "/new", 1 << 20)}
    # The chunk servers learn where the database is now when they register.
    restart_metaserver()
    files = {p for p in local.dir.glob("cs*/data/**/*") if p.is_file()}

    # The metaserver's disk is put back to the older image.
    local.stop(meta)
    database.write_bytes(image.read_bytes())
    local.start_metaserver(local.load())
    wait_for(lambda: (meta / "log").read_text().count("not one it can trust") >= 3, 60,
             "the chunk servers to be refused")
    assert not any(cs["alive"] for cs in meta_call(ref, "status")["chunkservers"])
    assert {p for p in local.dir.glob("cs*/data/**/*") if p.is_file()} == files

    # Restored as a backup instead, the image serves, and the chunks it does
    # not know are kept.
    local.stop(meta)
    done = subprocess.run([sys.executable, "-m", "metaserver.restore", "--data-dir",
                           str(meta / "data"), "--hold", "3600", str(image)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    restart_metaserver()
    with cluster.extra_mount() as fresh:
        assert sorted(os.listdir(fresh)) == ["old"]
        assert (fresh / "old").read_bytes() == b"in the image"
    for chunk in new_chunks:
        assert any(replica_paths(local.dir / f"cs{i}" / "data", chunk)[0].exists()
                   for i in (1, 2, 3))
