"""The trash on a real cluster with real mounts: what goes into /.trash, what
does not, `dfs trash ls`, `restore` and `purge`, quotas, and expiry."""

import json
import os

import pytest

from conftest import start_cluster
from faults import meta_call, wait_for

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20


@pytest.fixture(scope="module")
def trash_cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("trash"), trash_hours=1)
    yield cluster
    cluster.teardown()


def listing(cluster) -> dict[str, dict]:
    """The trash's entries by the path they were removed from."""
    shown = json.loads(cluster.dfs("trash", "ls", *cluster.cli_args, "--json").stdout)
    return {entry["path"]: entry for entry in shown}


def quota_used(cluster, path: str) -> int:
    return json.loads(cluster.dfs("quota", "get", *cluster.cli_args, path,
                                  "--json").stdout)["bytes_used"]


def test_a_removed_tree_waits_in_the_trash_and_comes_back(trash_cluster, tmp_path):
    c, mnt = trash_cluster, trash_cluster.mnt
    (mnt / "vol" / "db" / "logs").mkdir(parents=True)
    c.dfs("quota", "set", *c.cli_args, "/vol", "--bytes", "4M")
    data = os.urandom(MiB + 5)
    (mnt / "vol" / "db" / "logs" / "binlog.1").write_bytes(data)
    (mnt / "vol" / "db" / "table").write_bytes(b"rows")
    assert quota_used(c, "/vol") == MiB + 9

    os.system(f"rm -rf {mnt / 'vol' / 'db'}")
    assert not (mnt / "vol" / "db").exists()
    kept = listing(c)
    assert kept["/vol/db/logs/binlog.1"]["size"] == MiB + 5
    assert kept["/vol/db/table"]["size"] == 4
    # The volume has its room back at once.
    assert quota_used(c, "/vol") == 0

    shown = c.dfs("trash", "restore", *c.cli_args, kept["/vol/db/logs/binlog.1"]["entry"])
    assert "restored /vol/db/logs/binlog.1" in shown.stdout
    assert (mnt / "vol" / "db" / "logs" / "binlog.1").read_bytes() == data
    assert quota_used(c, "/vol") == MiB + 5
    assert "/vol/db/logs/binlog.1" not in listing(c)
    assert os.listxattr(mnt / "vol" / "db" / "logs" / "binlog.1") == []

    # A file that took the old one's place is never replaced.
    (mnt / "vol" / "db" / "table").write_bytes(b"new rows")
    refused = c.dfs("trash", "restore", *c.cli_args, kept["/vol/db/table"]["entry"],
                    check=False)
    assert refused.returncode == 1 and "exists" in refused.stderr
    c.dfs("trash", "restore", *c.cli_args, kept["/vol/db/table"]["entry"], "--to",
          "/vol/db/table.old")
    assert (mnt / "vol" / "db" / "table.old").read_bytes() == b"rows"
    assert (mnt / "vol" / "db" / "table").read_bytes() == b"new rows"

    # Back into a volume with no room for it: the quota says no, the trash keeps it.
    (mnt / "vol" / "db" / "logs" / "binlog.1").unlink()
    (mnt / "vol" / "filler").write_bytes(os.urandom(4 * MiB - 20))
    entry = listing(c)["/vol/db/logs/binlog.1"]["entry"]
    full = c.dfs("trash", "restore", *c.cli_args, entry, check=False)
    assert full.returncode == 1 and "quota" in full.stderr
    assert "/vol/db/logs/binlog.1" in listing(c)


def test_what_the_trash_keeps_and_what_it_does_not(trash_cluster):
    c, mnt = trash_cluster, trash_cluster.mnt
    folder = mnt / "kinds"
    folder.mkdir()
    (folder / "linked").write_bytes(b"two names")
    os.link(folder / "linked", folder / "other-name")
    (folder / "replaced").write_bytes(b"old")
    (folder / "newer").write_bytes(b"new")
    (folder / "gone-for-good").write_bytes(b"x" * 1000)
    (folder / "empty-dir").mkdir()
    os.symlink("linked", folder / "symlink")

    os.unlink(folder / "linked")                       # its data keeps a name
    os.rename(folder / "newer", folder / "replaced")   # the old `replaced` is removed
    os.rmdir(folder / "empty-dir")
    os.unlink(folder / "symlink")
    kinds = meta_call(c.ref, "resolve", path=b"/kinds")["ino"]
    meta_call(c.ref, "unlink", parent=kinds, name=b"gone-for-good", trash=False)

    kept = listing(c)
    assert "/kinds/replaced" in kept and "/kinds/symlink" in kept
    for path in ("/kinds/linked", "/kinds/empty-dir", "/kinds/gone-for-good"):
        assert path not in kept
    assert (folder / "other-name").read_bytes() == b"two names"

    # Removing it from the trash deletes it; so does purge.
    hour, name = kept["/kinds/symlink"]["entry"].split("/")
    os.unlink(mnt / ".trash" / hour / name)
    assert "/kinds/symlink" not in listing(c)
    assert not any(p.startswith("/.trash") for p in listing(c))
    chunks_before = meta_call(c.ref, "status")["chunks"]
    purged = c.dfs("trash", "purge", *c.cli_args, "--all").stdout
    assert "deleted" in purged and listing(c) == {}
    assert not any((mnt / ".trash").iterdir())
    wait_for(lambda: meta_call(c.ref, "status")["chunks"] < chunks_before, 10,
             "the purged files' chunks to be deleted")


def test_files_leave_the_trash_when_their_time_is_up(tmp_path):
    cluster = start_cluster(tmp_path, trash_hours=0.001)   # 3.6 s
    try:
        mnt = cluster.mnt
        (mnt / "short-lived").write_bytes(os.urandom(MiB))
        chunks = meta_call(cluster.ref, "status")["chunks"]
        (mnt / "short-lived").unlink()
        entry = listing(cluster)["/short-lived"]["entry"]
        assert meta_call(cluster.ref, "status")["chunks"] == chunks
        # Something the trash did not make there is left alone, and holds nothing up.
        made_here = mnt / ".trash" / entry.split("/")[0] / "made-here"
        made_here.mkdir()
        wait_for(lambda: listing(cluster) == {}, 30, "the trash to expire")
        assert made_here.is_dir()
        wait_for(lambda: meta_call(cluster.ref, "status")["chunks"] < chunks, 10,
                 "the expired file's chunks to be deleted")
    finally:
        cluster.teardown()
