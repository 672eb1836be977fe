"""The dfs command: local cluster lifecycle, status, quotas, mounts, help."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

DFS = [sys.executable, "-m", "dfs.cli"]


def run(*args, check=True):
    result = subprocess.run(DFS + list(args), capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("command", [[], ["up"], ["down"], ["mount"], ["umount"], ["status"],
                                     ["quota"], ["quota", "set"], ["quota", "get"],
                                     ["quota", "ls"], ["sessions"], ["info"],
                                     ["chunkserver"], ["chunkserver", "drain"],
                                     ["chunkserver", "remove"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert "usage: dfs" in result.stdout
    assert len(result.stdout.splitlines()) > 3


def test_status_json_and_text(shared_cluster):
    status = json.loads(run("status", *shared_cluster.cli_args, "--json").stdout)
    assert sum(cs["alive"] for cs in status["chunkservers"]) == 3
    text = run("status", *shared_cluster.cli_args).stdout
    assert "3 alive of 3" in text and "under-replicated" in text


def test_status_without_cluster_is_a_clear_error(tmp_path):
    result = run("status", "--data-dir", str(tmp_path), check=False)
    assert result.returncode != 0
    assert "dfs up" in result.stderr


def test_wrong_secret_is_refused(shared_cluster, tmp_path):
    bad = tmp_path / "secret"
    bad.write_text("x" * 40)
    result = run("status", "--meta", shared_cluster.ref.meta, "--secret-file", str(bad),
                 check=False)
    assert result.returncode != 0 and "secret" in result.stderr


def test_quota_commands(shared_cluster, mnt):
    path = "/" + mnt.name
    run("quota", "set", *shared_cluster.cli_args, path, "--bytes", "1M", "--inodes", "100")
    (mnt / "f").write_bytes(b"x" * 1000)
    info = json.loads(run("quota", "get", *shared_cluster.cli_args, path, "--json").stdout)
    assert info["bytes_limit"] == 1 << 20 and info["inodes_limit"] == 100
    assert info["bytes_used"] == 1000 and info["inodes_used"] >= 1
    listing = run("quota", "ls", *shared_cluster.cli_args).stdout
    assert path in listing
    sub = shared_cluster.mount(path)
    st = os.statvfs(sub)
    assert st.f_blocks * st.f_frsize == 1 << 20


def test_mount_subdir_and_umount(shared_cluster, mnt):
    (mnt / "inside").write_bytes(b"only this folder")
    sub = shared_cluster.mount("/" + mnt.name)
    assert os.listdir(sub) == ["inside"]
    assert (sub / "inside").read_bytes() == b"only this folder"
    run("umount", str(sub))
    assert not os.path.ismount(sub)
    run("umount", str(sub))


def test_a_mount_pinned_to_another_cluster_refuses_to_start(shared_cluster, mnt, tmp_path):
    (mnt / "f").write_bytes(b"this cluster's")
    ours = run("status", *shared_cluster.cli_args).stdout.split("cluster: ")[1].split()[0]
    other = f"{int(ours, 16) ^ 1:x}"
    target = tmp_path / "m"
    target.mkdir()
    refused = run("mount", *shared_cluster.cli_args, "--cluster-id", other, str(target),
                  check=False)
    assert refused.returncode != 0 and "EREMCHG" in refused.stderr
    assert f"is cluster {ours}'s, not {other}'s" in refused.stderr
    assert not os.path.ismount(target)
    run("mount", *shared_cluster.cli_args, "--cluster-id", ours, str(target))
    try:
        assert (target / mnt.name / "f").read_bytes() == b"this cluster's"
    finally:
        shared_cluster.unmount(target)
    assert "is the hexadecimal number" in run("mount", *shared_cluster.cli_args,
                                              "--cluster-id", "zz", str(target),
                                              check=False).stderr


def test_mount_read_cache_size_reaches_the_mount_process(shared_cluster, mnt, tmp_path):
    (mnt / "f").write_bytes(b"read through a mount with a larger cache")
    target, log = tmp_path / "m", tmp_path / "mount.log"
    target.mkdir()
    run("mount", *shared_cluster.cli_args, "--read-cache", "256", "--log-file", str(log),
        str(target))
    try:
        assert (target / mnt.name / "f").read_bytes() == b"read through a mount with a larger cache"
        assert "read_cache_mib=256" in log.read_text()
    finally:
        shared_cluster.unmount(target)


def test_mount_refuses_a_read_cache_too_small(shared_cluster, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    result = run("mount", *shared_cluster.cli_args, "--read-cache", "8", str(target),
                 check=False)
    assert result.returncode == 2
    assert "the read cache takes at least 16 MiB" in result.stderr
    assert not os.path.ismount(target)


def test_mount_of_missing_subdir_fails_cleanly(shared_cluster, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    result = run("mount", *shared_cluster.cli_args, "--subdir", "/no/such/dir", str(target),
                 check=False)
    assert result.returncode != 0
    assert "No such file" in result.stderr or "ENOENT" in result.stderr
    assert not os.path.ismount(target)


def test_foreground_mount_stops_on_sigterm(shared_cluster, tmp_path):
    target = tmp_path / "fg"
    target.mkdir()
    env = dict(os.environ, DFS_SECRET_FILE=shared_cluster.ref.secret_file)
    proc = subprocess.Popen(DFS + ["mount", "--meta", shared_cluster.ref.meta, "--foreground",
                                   str(target)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(target) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        assert os.path.ismount(target)
        (target / "fg-file").write_bytes(b"through a foreground mount")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not os.path.ismount(target)
        assert (shared_cluster.mnt / "fg-file").read_bytes() == b"through a foreground mount"
    finally:
        if proc.poll() is None:
            proc.kill()
        if os.path.ismount(target):
            subprocess.run(["umount", "-l", str(target)])


def test_paths_on_a_local_mount_name_the_same_files(shared_cluster, mnt):
    (mnt / "sub").mkdir()
    (mnt / "sub" / "f").write_bytes(b"x" * 100)
    inside = f"/{mnt.name}/sub/f"
    by_dfs = json.loads(run("info", *shared_cluster.cli_args, "--json", inside).stdout)
    by_local = json.loads(run("info", *shared_cluster.cli_args, "--json",
                              str(mnt / "sub" / "f")).stdout)
    assert by_local["path"] == inside and by_local["attr"]["ino"] == by_dfs["attr"]["ino"]
    relative = subprocess.run(DFS + ["info", *shared_cluster.cli_args, "--json", "sub/f"],
                              cwd=mnt, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(relative.stdout)["path"] == inside
    # A mount of one folder: its paths are that folder's.
    sub = shared_cluster.mount("/" + mnt.name)
    run("quota", "set", *shared_cluster.cli_args, str(sub / "sub"), "--bytes", "1M")
    got = json.loads(run("quota", "get", *shared_cluster.cli_args, f"/{mnt.name}/sub",
                         "--json").stdout)
    assert got["bytes_limit"] == 1 << 20
    refused = run("info", *shared_cluster.cli_args, "not/on/a/mount", check=False)
    assert refused.returncode != 0 and "a path on a dfs mount" in refused.stderr


def test_a_local_path_on_another_clusters_mount_is_refused(shared_cluster, cluster, mnt):
    theirs = cluster.mnt / mnt.name
    theirs.mkdir()
    (theirs / "f").touch()
    (mnt / "f").touch()
    assert os.stat(theirs / "f").st_ino != os.stat(mnt / "f").st_ino
    refused = run("info", *shared_cluster.cli_args, str(theirs / "f"), check=False)
    assert refused.returncode != 0 and "not of the cluster asked" in refused.stderr
    assert run("info", *cluster.cli_args, str(theirs / "f")).returncode == 0
