"""Close-to-open consistency between two mounts of one cluster."""

import os
import time

import pytest


@pytest.fixture
def two_mounts(shared_cluster, mnt):
    with shared_cluster.extra_mount() as other:
        yield mnt, other / mnt.name


def test_close_to_open(two_mounts):
    a, b = two_mounts
    with open(a / "f", "wb") as f:
        f.write(b"version one")
    with open(b / "f", "rb") as f:
        assert f.read() == b"version one"
    with open(a / "f", "wb") as f:
        f.write(b"version two, longer")
    with open(b / "f", "rb") as f:
        assert f.read() == b"version two, longer"
    with open(b / "f", "r+b") as f:
        f.write(b"VERSION")
    with open(a / "f", "rb") as f:
        assert f.read() == b"VERSION two, longer"


def test_fsync_visible_before_close(two_mounts):
    a, b = two_mounts
    with open(a / "g", "wb") as f:
        f.write(b"synced")
        f.flush()
        os.fsync(f.fileno())
        with open(b / "g", "rb") as g:
            assert g.read() == b"synced"


def test_namespace_changes_visible(two_mounts):
    a, b = two_mounts
    os.mkdir(a / "d")
    (a / "d" / "x").write_bytes(b"1")
    os.rename(a / "d" / "x", a / "d" / "y")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sorted(os.listdir(b / "d")) != ["y"]:
        time.sleep(0.1)
    assert sorted(os.listdir(b / "d")) == ["y"]
    assert (b / "d" / "y").read_bytes() == b"1"


def test_rename_is_atomic_for_readers(two_mounts):
    a, b = two_mounts
    (a / "config").write_bytes(b"old" * 1000)
    for i in range(20):
        (a / "config.tmp").write_bytes(f"new{i}".encode() * 1000)
        os.rename(a / "config.tmp", a / "config")
        content = (b / "config").read_bytes()
        assert content in (f"new{i}".encode() * 1000, f"new{i - 1}".encode() * 1000,
                           b"old" * 1000)
