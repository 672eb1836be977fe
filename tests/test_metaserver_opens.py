"""Open files held in the metaserver's memory: unlinked-but-open files keep their
data until the last close, across metaserver crashes, and a restarted
metaserver keeps what restored sessions may hold until they re-announce."""

import errno
import os

import pytest
import trio

from conftest import start_cluster
from faults import kill_server, meta_call, restart_server, wait_for
from test_metaserver_support import ROOT, error_of, make_file, meta, meta_factory, new_session

pytestmark = pytest.mark.timeout(90)
__all__ = ["meta", "meta_factory"]


def crash_and_restart(meta) -> None:
    """SIGKILL the metaserver (no clean shutdown) and start it on the same address."""
    meta.proc.kill()
    meta.proc.wait(10)
    meta.log.close()
    meta.start(meta.addr)


def test_open_and_release_cost_no_commit(meta):
    async def body(c):
        s = await new_session(c)
        f = await make_file(c, ROOT, b"f", session=s)
        await c.call("release", ino=f["ino"], session=s)
        before = (await c.call("status"))["commits"]
        for _ in range(20):
            attr = await c.call("open", ino=f["ino"], session=s)
            assert attr["ino"] == f["ino"] and attr["nlink"] == 1
            await c.call("release", ino=f["ino"], session=s)
        assert (await c.call("status"))["commits"] == before

    meta.run(body)


def test_handles_are_counted(meta):
    async def body(c):
        s = await new_session(c)
        f = await make_file(c, ROOT, b"f", session=s)
        await c.call("open", ino=f["ino"], session=s)
        await c.call("unlink", parent=ROOT, name=b"f")
        await c.call("release", ino=f["ino"], session=s)
        assert (await c.call("getattr", ino=f["ino"]))["nlink"] == 0
        await c.call("release", ino=f["ino"], session=s)
        assert await error_of(c.call("getattr", ino=f["ino"])) == errno.ENOENT
        assert (await c.call("status"))["orphans"] == 0
        assert await error_of(c.call("open", ino=f["ino"], session=s, count=0)) == errno.EINVAL

    meta.run(body)


def test_orphan_survives_a_crash_until_its_holder_releases(meta):
    async def before(c):
        s = await new_session(c)
        f = await make_file(c, ROOT, b"f", session=s)
        await c.call("commit", ino=f["ino"], session=s, size=4321, mtime=1)
        await c.call("unlink", parent=ROOT, name=b"f")
        return s, f["ino"]

    s, ino = meta.run(before)
    crash_and_restart(meta)

    async def after(c):
        await c.call("open", ino=ino, session=s, count=1)      # the re-announce
        await c.call("session_renew", session=s)
        assert (await c.call("getattr", ino=ino))["size"] == 4321
        await c.call("release", ino=ino, session=s)
        assert await error_of(c.call("getattr", ino=ino)) == errno.ENOENT

    meta.run(after)


def test_restart_grace_keeps_files_unlinked_before_the_holder_reannounces(meta):
    async def before(c):
        holder, silent = await new_session(c), await new_session(c)
        f = await make_file(c, ROOT, b"f", session=holder)
        g = await make_file(c, ROOT, b"g", session=silent)
        return holder, silent, f["ino"], g["ino"]

    holder, silent, f, g = meta.run(before)
    crash_and_restart(meta)

    async def after(c):
        # Unlinked before either restored session spoke: both are kept.
        await c.call("unlink", parent=ROOT, name=b"f")
        await c.call("unlink", parent=ROOT, name=b"g")
        assert (await c.call("getattr", ino=f))["nlink"] == 0
        assert (await c.call("getattr", ino=g))["nlink"] == 0
        # The holder re-announces f and speaks: f stays, g still waits for `silent`.
        await c.call("open", ino=f, session=holder, count=1)
        await c.call("session_renew", session=holder)
        assert (await c.call("getattr", ino=f))["nlink"] == 0
        assert (await c.call("getattr", ino=g))["nlink"] == 0
        # `silent` speaks without re-announcing g: it did not hold it.
        await c.call("session_renew", session=silent)
        assert await error_of(c.call("getattr", ino=g)) == errno.ENOENT
        assert (await c.call("getattr", ino=f))["nlink"] == 0
        await c.call("release", ino=f, session=holder)
        assert await error_of(c.call("getattr", ino=f)) == errno.ENOENT

    meta.run(after)


def test_restart_grace_ends_when_silent_sessions_expire(meta_factory):
    meta = meta_factory(session_ttl=1.5)

    async def before(c):
        s = await new_session(c)
        f = await make_file(c, ROOT, b"f", session=s)
        return s, f["ino"]

    s, ino = meta.run(before)
    crash_and_restart(meta)

    async def after(c):
        await c.call("unlink", parent=ROOT, name=b"f")
        assert (await c.call("getattr", ino=ino))["nlink"] == 0
        with trio.fail_after(10):
            while await error_of(c.call("getattr", ino=ino)) != errno.ENOENT:
                await trio.sleep(0.1)
        assert await error_of(c.call("session_renew", session=s)) == errno.ESTALE
        assert (await c.call("status"))["orphans"] == 0

    meta.run(after)


def test_orphan_reopened_by_another_session_is_kept_for_it(meta):
    async def body(c):
        first, second = await new_session(c), await new_session(c)
        f = await make_file(c, ROOT, b"f", session=first)
        await c.call("unlink", parent=ROOT, name=b"f")
        # As the kernel does for an open of /proc/PID/fd/N of an unlinked file.
        await c.call("open", ino=f["ino"], session=second)
        await c.call("release", ino=f["ino"], session=first)
        assert (await c.call("getattr", ino=f["ino"]))["nlink"] == 0
        await c.call("session_close", session=second)
        assert await error_of(c.call("getattr", ino=f["ino"])) == errno.ENOENT

    meta.run(body)


# ---- through FUSE -----------------------------------------------------------------


@pytest.fixture
def fuse_cluster(tmp_path):
    cluster = start_cluster(tmp_path, chunkservers=2, replicas=2)
    yield cluster
    cluster.teardown()


def orphans(ref) -> int:
    return meta_call(ref, "status")["orphans"]


@pytest.mark.timeout(120)
def test_unlinked_open_file_readable_until_close_across_a_metaserver_crash(fuse_cluster):
    c = fuse_cluster
    other = c.mount()
    data = os.urandom(300_000)
    (c.mnt / "early").write_bytes(data)
    (c.mnt / "late").write_bytes(data[::-1])
    early = open(c.mnt / "early", "rb")
    late = open(c.mnt / "late", "rb")
    try:
        # Unlinked while open, from another mount: still readable.
        os.unlink(other / "early")
        assert early.read() == data
        kill_server(c.local, "meta")
        restart_server(c.local, "meta")
        # After the crash: the orphan is still there for its holder, and a file
        # the holder had open but not yet unlinked is kept when unlinked now.
        os.unlink(other / "late")
        # The holding mount's first request reconnects it, which re-announces
        # both files before the request itself says the session is back: had
        # the re-announce missed one, that file would be freed here.
        (c.mnt / "new").write_bytes(b"n")
        assert orphans(c.ref) == 2
        early.seek(0)
        assert early.read() == data
        assert late.read() == data[::-1]
        assert orphans(c.ref) == 2
    finally:
        early.close()
        late.close()
    wait_for(lambda: orphans(c.ref) == 0, 20, "the orphans to be freed after the last close")
