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


def test_quiet_writers_make_other_opens_distrust_their_caches(meta):
    async def before(c):
        a, b = await new_session(c), await new_session(c)
        ino = (await make_file(c, ROOT, b"f", session=a))["ino"]

        async def changing_for_b() -> bool:
            reply = await c.call("open", ino=ino, session=b)
            await c.call("release", ino=ino, session=b)
            return reply["changing"]

        assert not await changing_for_b()
        await c.call("commit", ino=ino, session=a, size=10, mtime=5, quiet=True)
        assert await changing_for_b()
        # The quiet writer's own opens trust its caches.
        assert not (await c.call("open", ino=ino, session=a))["changing"]
        await c.call("commit", ino=ino, session=a, size=10, mtime=6)
        assert not await changing_for_b()
        await c.call("commit", ino=ino, session=a, size=10, mtime=7, quiet=True)
        for _ in range(2):
            await c.call("release", ino=ino, session=a)
        assert not await changing_for_b()
        # A session that does not hold the file cannot write it quietly.
        await c.call("commit", ino=ino, session=a, size=10, mtime=8, quiet=True)
        assert not await changing_for_b()
        await c.call("open", ino=ino, session=a)
        await c.call("commit", ino=ino, session=a, size=10, mtime=9, quiet=True)
        return a, b, ino

    a, b, ino = meta.run(before)
    crash_and_restart(meta)

    async def after(c):
        await c.call("session_renew", session=b)
        # Until every restored session has re-announced, any file may be changing.
        reply = await c.call("open", ino=ino, session=b)
        assert reply["changing"]
        await c.call("release", ino=ino, session=b)
        await c.call("open", ino=ino, session=a, count=1, quiet=True)
        await c.call("session_renew", session=a)
        assert (await c.call("open", ino=ino, session=b))["changing"]
        await c.call("commit", ino=ino, session=a, size=10, mtime=10)
        assert not (await c.call("open", ino=ino, session=b))["changing"]
        assert (await c.call("getattr", ino=ino))["mtime"] == 10

    meta.run(after)


@pytest.mark.parametrize("op, args", [("commit", {"size": 0, "mtime": 1}),
                                      ("reserve", {"end": 10}),
                                      ("chunk_write", {"index": 0})])
def test_any_request_of_a_restored_session_ends_its_grace(meta, op, args):
    async def before(c):
        writer, reader = await new_session(c), await new_session(c)
        f = await make_file(c, ROOT, b"f", session=writer)
        g = await make_file(c, ROOT, b"g", session=writer)
        await c.call("release", ino=g["ino"], session=writer)
        return writer, reader, f["ino"], g["ino"]

    writer, reader, f, g = meta.run(before)
    crash_and_restart(meta)

    async def after(c):
        await c.call("session_renew", session=reader)
        await c.call("open", ino=f, session=writer, count=1)   # the re-announce
        await c.call("unlink", parent=ROOT, name=b"g")
        assert (await c.call("open", ino=f, session=reader))["changing"]
        assert (await c.call("getattr", ino=g))["nlink"] == 0
        # Its outcome does not matter (no chunk server here for a chunk_write):
        # the request itself says the writer has re-announced everything.
        await error_of(c.call(op, ino=f, session=writer, **args))
        assert not (await c.call("open", ino=f, session=reader))["changing"]
        assert await error_of(c.call("getattr", ino=g)) == errno.ENOENT

    meta.run(after)


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


@pytest.mark.timeout(120)
def test_a_quiet_writer_is_re_announced_after_a_metaserver_crash(fuse_cluster):
    """Opens elsewhere distrust their caches of a file written quietly, also
    once the metaserver has restarted and every session has spoken again."""
    c = fuse_cluster
    path = c.mnt / "log"
    path.write_bytes(bytes(64 * 1024))
    ino = os.stat(path).st_ino
    session = meta_call(c.ref, "session_open", host="test", mountpoint="-", pid=1)["session"]

    def changing() -> bool:
        reply = meta_call(c.ref, "open", ino=ino, session=session)
        meta_call(c.ref, "release", ino=ino, session=session)
        return reply["changing"]

    with open(path, "r+b", buffering=0) as f:
        for i in range(2):
            f.write(b"%d" % i * 4096)
            os.fdatasync(f.fileno())
        assert changing()
        kill_server(c.local, "meta")
        restart_server(c.local, "meta")
        # The writing mount's next request reconnects it (re-announcing the
        # file); creating a file then ends its restart grace, as the renewal
        # ends that of the test's own session.
        (c.mnt / "after").write_bytes(b"a")
        meta_call(c.ref, "session_renew", session=session)
        assert changing()
    assert not changing()
    assert path.read_bytes()[:8192] == b"0" * 4096 + b"1" * 4096
