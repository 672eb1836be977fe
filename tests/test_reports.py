"""`dfs info` and `dfs sessions`: what the metaserver reports about a path and
about the clients connected to it."""

import errno
import json
import os
import socket
import time

import pytest

from conftest import TEST_CHUNK_SIZE, start_cluster
from dfs.errors import DfsError
from faults import alive, chunks_of, kill_server, meta_call, processes_mentioning, wait_for


def info(cluster, path: str) -> dict:
    return json.loads(cluster.dfs("info", *cluster.cli_args, "--json", path).stdout)


def sessions(cluster) -> list[dict]:
    return json.loads(cluster.dfs("sessions", *cluster.cli_args, "--json").stdout)


def test_info_shows_each_chunk_and_the_servers_holding_it(shared_cluster, mnt):
    data = os.urandom(2 * TEST_CHUNK_SIZE + 100)
    (mnt / "f").write_bytes(data)
    path = f"/{mnt.name}/f"
    found = info(shared_cluster, path)
    assert found["attr"]["size"] == len(data)
    assert found["replicas"]["effective"] == 2
    chunks = found["chunks"]
    assert [c["index"] for c in chunks] == [0, 1, 2]
    expected = chunks_of(shared_cluster.ref, path, TEST_CHUNK_SIZE)
    for row, read in zip(chunks, expected):
        assert row["chunk"] == read["chunk"] and row["version"] == read["version"]
        assert sorted(addr for _, addr, _ in row["servers"]) == sorted(
            addr for _, addr in read["servers"])
        assert all(up for _, _, up in row["servers"]) and row["wanted"] == 2
    text = shared_cluster.dfs("info", *shared_cluster.cli_args, path).stdout
    assert "3 chunk(s)" in text and text.count(", ok: ") == 3
    # Each server in its host's zone, which goes unsaid.
    assert all(row["zones"] == ["127.0.0.1"] * 2 for row in chunks) and "zone" not in text


def test_info_of_a_sparse_file_lists_only_the_chunks_written(shared_cluster, mnt):
    with open(mnt / "sparse", "wb") as f:
        f.seek(3 * TEST_CHUNK_SIZE + 10)
        f.write(b"end")
    found = info(shared_cluster, f"/{mnt.name}/sparse")
    assert [c["index"] for c in found["chunks"]] == [3]


def test_chunk_list_pages_and_refuses_bad_requests(shared_cluster, mnt):
    (mnt / "f").write_bytes(os.urandom(3 * TEST_CHUNK_SIZE))
    ref = shared_cluster.ref
    ino = meta_call(ref, "resolve", path=f"/{mnt.name}/f".encode())["ino"]
    first = meta_call(ref, "chunk_list", ino=ino, start=0, limit=2)
    assert [c["index"] for c in first["chunks"]] == [0, 1] and first["next"] == 2
    rest = meta_call(ref, "chunk_list", ino=ino, start=first["next"], limit=2)
    assert [c["index"] for c in rest["chunks"]] == [2] and rest["next"] is None
    assert rest["chunk_size"] == TEST_CHUNK_SIZE
    for bad in ({"start": 0, "limit": 0}, {"start": -1, "limit": 1},
                {"start": 0, "limit": 1 << 20}):
        with pytest.raises(DfsError) as caught:
            meta_call(ref, "chunk_list", ino=ino, **bad)
        assert caught.value.errno == errno.EINVAL
    folder = meta_call(ref, "resolve", path=f"/{mnt.name}".encode())["ino"]
    with pytest.raises(DfsError) as caught:
        meta_call(ref, "chunk_list", ino=folder, start=0, limit=1)
    assert caught.value.errno == errno.EISDIR


def test_info_of_a_folder_counts_what_lies_beneath_once(shared_cluster, mnt):
    tree = mnt / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_bytes(b"a" * 100)
    (tree / "b").write_bytes(b"b" * (TEST_CHUNK_SIZE + 1))
    os.link(tree / "b", tree / "b-again")
    (tree / "sub" / "empty").touch()
    os.symlink("a", tree / "link")
    os.mkfifo(tree / "pipe")
    found = info(shared_cluster, f"/{mnt.name}/tree")
    assert found["chunks"] == []
    assert found["summary"] == {"files": 3, "directories": 2, "symlinks": 1, "others": 1,
                                "bytes": 100 + TEST_CHUNK_SIZE + 1, "chunks": 3,
                                "under_replicated": 0, "unavailable": 0}
    # A snapshot shares its source's chunks: counted once beneath their common parent.
    shared_cluster.dfs("snapshot", *shared_cluster.cli_args, f"/{mnt.name}/tree",
                       f"/{mnt.name}/copy")
    both = info(shared_cluster, f"/{mnt.name}")["summary"]
    assert both["files"] == 6 and both["chunks"] == 3
    assert both["bytes"] == 2 * (100 + TEST_CHUNK_SIZE + 1)
    text = shared_cluster.dfs("info", *shared_cluster.cli_args, f"/{mnt.name}/tree").stdout
    assert "holds 3 file(s), 1 folder(s)" in text


def test_info_marks_dead_servers_and_unavailable_chunks(tmp_path):
    cluster = start_cluster(tmp_path, chunkservers=2, heartbeat_timeout=2)
    try:
        (cluster.mnt / "f").write_bytes(os.urandom(1000))
        ref = cluster.ref
        kill_server(cluster.local, "cs1")
        wait_for(lambda: not alive(ref, cluster.local.load().chunkservers[0]), 20,
                 "cs1 to be seen dead")
        row = info(cluster, "/f")["chunks"][0]
        assert sorted(up for _, _, up in row["servers"]) == [False, True]
        text = cluster.dfs("info", *cluster.cli_args, "/f").stdout
        assert "UNDER-REPLICATED (1 of 2)" in text and "(DEAD)" in text
        assert info(cluster, "/")["summary"]["under_replicated"] == 1
        kill_server(cluster.local, "cs2")
        wait_for(lambda: not alive(ref, cluster.local.load().chunkservers[1]), 20,
                 "cs2 to be seen dead")
        summary = info(cluster, "/")["summary"]
        assert summary["unavailable"] == 1 and summary["under_replicated"] == 0
        assert "UNAVAILABLE" in cluster.dfs("info", *cluster.cli_args, "/f").stdout
    finally:
        cluster.teardown()


def test_info_of_a_missing_path_is_a_clear_error(shared_cluster):
    result = shared_cluster.dfs("info", *shared_cluster.cli_args, "/no/such/file",
                                check=False)
    assert result.returncode != 0 and "ENOENT" in result.stderr
    result = shared_cluster.dfs("info", *shared_cluster.cli_args, "relative", check=False)
    assert result.returncode != 0 and "starting with '/'" in result.stderr


def test_sessions_lists_each_mount_with_what_it_holds(shared_cluster, mnt):
    started = time.time()
    with shared_cluster.extra_mount() as other:
        listed = [s for s in sessions(shared_cluster) if s["mountpoint"] == str(other)]
        assert len(listed) == 1
        session = listed[0]
        assert session["host"] == socket.gethostname()
        assert session["pid"] in processes_mentioning(str(other))
        assert started - 5 <= session["opened"] <= time.time() + 5
        assert session["fence"] is None and not session["restored"]
        assert 0 < session["expires"] <= 60
        before = session["open"]
        shared_cluster.dfs("quota", "set", *shared_cluster.cli_args, f"/{mnt.name}",
                           "--bytes", "1G")
        (mnt / "held").touch()
        with open(other / mnt.name / "held", "r+b") as held:
            held.write(os.urandom(3 * TEST_CHUNK_SIZE))
            held.flush()
            now = next(s for s in sessions(shared_cluster) if s["session"] == session["session"])
            assert now["open"] == before + 1 and now["reserving"] == 1
            text = shared_cluster.dfs("sessions", *shared_cluster.cli_args).stdout
            assert f"session {session['session']}: {socket.gethostname()}:{other}" in text
            assert "room held under quotas" in text
            # Names looked up and not found: the mount leases the folder.
            for i in range(3):
                assert not (other / mnt.name / f"missing-{i}").exists()
            now = next(s for s in sessions(shared_cluster) if s["session"] == session["session"])
            assert now["folder_leases"] == 1
            assert "1 folder lease(s)" in shared_cluster.dfs(
                "sessions", *shared_cluster.cli_args).stdout
        now = next(s for s in sessions(shared_cluster) if s["session"] == session["session"])
        assert now["open"] == before and now["reserving"] == 0
    wait_for(lambda: all(s["session"] != session["session"] for s in sessions(shared_cluster)),
             10, "the unmounted session to end")
