"""Property test: random sequences of file operations give the same results
on a dfs mount as on a local folder."""

import os
import shutil
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NAMES = st.sampled_from(["a", "b", "c", "d/e", "d/f", "d"])
OFFSETS = st.integers(min_value=0, max_value=3 * 1024 * 1024)
DATA = st.binary(min_size=0, max_size=70_000) | st.builds(
    lambda n, b: bytes([b]) * n, st.integers(0, 1_200_000), st.integers(0, 255))

OPS = st.one_of(
    st.tuples(st.just("write"), NAMES, OFFSETS, DATA),
    st.tuples(st.just("append"), NAMES, DATA),
    st.tuples(st.just("truncate"), NAMES, OFFSETS),
    st.tuples(st.just("read"), NAMES),
    st.tuples(st.just("unlink"), NAMES),
    st.tuples(st.just("mkdir"), NAMES),
    st.tuples(st.just("rmdir"), NAMES),
    st.tuples(st.just("rename"), NAMES, NAMES),
    st.tuples(st.just("link"), NAMES, NAMES),
    st.tuples(st.just("listdir"), st.sampled_from([".", "d"])),
    st.tuples(st.just("stat"), NAMES),
)


def apply(root, op):
    """Run one operation under root; return its result or the errno it raised."""
    kind, *args = op
    p = lambda name: os.path.join(root, name)  # noqa: E731
    try:
        if kind == "write":
            name, offset, data = args
            fd = os.open(p(name), os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            return None
        if kind == "append":
            with open(p(args[0]), "ab") as f:
                return f.write(args[1])
        if kind == "truncate":
            os.truncate(p(args[0]), args[1])
            return None
        if kind == "read":
            with open(p(args[0]), "rb") as f:
                return f.read()
        if kind == "unlink":
            return os.unlink(p(args[0]))
        if kind == "mkdir":
            return os.mkdir(p(args[0]))
        if kind == "rmdir":
            return os.rmdir(p(args[0]))
        if kind == "rename":
            return os.rename(p(args[0]), p(args[1]))
        if kind == "link":
            return os.link(p(args[0]), p(args[1]))
        if kind == "listdir":
            return sorted(os.listdir(p(args[0])))
        if kind == "stat":
            st_ = os.stat(p(args[0]))
            if os.path.isdir(p(args[0])):
                return (st_.st_mode,)
            return (st_.st_mode, st_.st_size, st_.st_nlink)
    except OSError as exc:
        return ("error", exc.errno)
    raise ValueError(kind)


@pytest.mark.timeout(600)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.data_too_large])
@given(ops=st.lists(OPS, min_size=1, max_size=25))
def test_mount_behaves_like_a_local_folder(shared_cluster, tmp_path_factory, ops):
    tag = uuid.uuid4().hex[:8]
    on_dfs = shared_cluster.mnt / f"model-{tag}"
    on_disk = tmp_path_factory.getbasetemp() / f"model-{tag}"
    os.mkdir(on_dfs)
    os.mkdir(on_disk)
    try:
        for op in ops:
            expected = apply(on_disk, op)
            actual = apply(on_dfs, op)
            assert actual == expected, f"{op[:2]} gave {str(actual)[:200]} on dfs, " \
                                       f"{str(expected)[:200]} locally"
    finally:
        shutil.rmtree(on_dfs, ignore_errors=True)
        shutil.rmtree(on_disk, ignore_errors=True)
