"""The whole cluster stopped and started again keeps every byte and attribute."""

import hashlib
import os

import pytest


def snapshot(root):
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            seen[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_uid, st.st_gid,
                                                 st.st_mtime_ns, st.st_nlink, digest)
    return seen


@pytest.mark.timeout(180)
def test_stop_and_start_keeps_everything(cluster):
    root = cluster.mnt
    os.makedirs(root / "a" / "b")
    (root / "a" / "small").write_bytes(b"tiny")
    (root / "a" / "b" / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    os.symlink("small", root / "a" / "link")
    os.link(root / "a" / "small", root / "a" / "hard")
    os.chmod(root / "a" / "small", 0o604)
    os.utime(root / "a" / "b" / "big", ns=(5, 123456789))
    os.setxattr(root / "a", "user.k", b"v")
    before = snapshot(root)
    cluster.local.down()
    assert not os.path.ismount(root)
    cluster.up()
    assert snapshot(root) == before
    assert os.getxattr(root / "a", "user.k") == b"v"
    cluster.local.down()
    cluster.local.down()
    cluster.up()
    cluster.up()
    assert snapshot(root) == before
