"""Attachment epochs on the metaserver: binding sessions to them, refusing
every change by a session whose epoch moved on, and restarts."""

import errno
import os

import pytest
import trio

from dfs.errors import DfsError
from test_metaserver_support import ROOT, error_of, make_dir, make_file, meta, meta_factory

pytestmark = pytest.mark.timeout(90)
__all__ = ["meta", "meta_factory"]


async def bound_session(c, ino: int, epoch: int) -> int:
    reply = await c.call("session_open", host="node-a", mountpoint="/mnt/vol", pid=os.getpid(),
                         fence=[ino, epoch])
    return reply["session"]


def test_a_session_of_an_older_epoch_is_refused_every_change_and_still_reads(meta):
    async def body(c):
        vol = (await make_dir(c, ROOT, b"vol"))["ino"]
        first = (await c.call("fence", ino=vol))["epoch"]
        old = await bound_session(c, vol, first)
        kept = await make_file(c, vol, b"kept", session=old, writer=old)
        await c.call("mkdir", parent=vol, name=b"d", mode=0o755, uid=0, gid=0, writer=old)

        second = (await c.call("fence", ino=vol))["epoch"]
        assert second == first + 1
        new = await bound_session(c, vol, second)

        changes = [
            c.call("mknod", parent=vol, name=b"x", mode=0o100644, rdev=0, uid=0, gid=0,
                   session=old),
            c.call("mkdir", parent=vol, name=b"y", mode=0o755, uid=0, gid=0, writer=old),
            c.call("symlink", parent=vol, name=b"s", target=b"kept", uid=0, gid=0, writer=old),
            c.call("link", ino=kept["ino"], parent=vol, name=b"l", writer=old),
            c.call("unlink", parent=vol, name=b"kept", writer=old),
            c.call("rmdir", parent=vol, name=b"d", writer=old),
            c.call("rename", parent=vol, name=b"kept", newparent=vol, newname=b"r", flags=0,
                   writer=old),
            c.call("setattr", ino=kept["ino"], changes={"mode": 0o600}, writer=old),
            c.call("setattr", ino=kept["ino"], changes={"size": 0}, writer=old),
            c.call("setxattr", ino=kept["ino"], name=b"user.a", value=b"1", flags=0,
                   writer=old),
            c.call("removexattr", ino=kept["ino"], name=b"user.a", writer=old),
            c.call("chunk_write", ino=kept["ino"], index=0, session=old),
            c.call("reserve", ino=kept["ino"], session=old, end=4096),
            c.call("commit", ino=kept["ino"], session=old, size=4096, mtime=1),
        ]
        for change in changes:
            assert await error_of(change) == errno.EROFS

        # Reading, opening and keeping the session alive go on.
        assert (await c.call("lookup", parent=vol, name=b"kept"))["ino"] == kept["ino"]
        await c.call("open", ino=kept["ino"], session=old)
        await c.call("release", ino=kept["ino"], session=old)
        await c.call("session_renew", session=old)

        # The session of the new epoch changes what it likes; so do callers
        # that name no session (the CSI controller, the dfs command).
        await c.call("mkdir", parent=vol, name=b"y", mode=0o755, uid=0, gid=0, writer=new)
        await c.call("setxattr", ino=kept["ino"], name=b"user.a", value=b"1", flags=0)
        assert await error_of(c.call("rmdir", parent=vol, name=b"y", writer=old)) == errno.EROFS
        await c.call("rmdir", parent=vol, name=b"y")

        # A mount of the old epoch cannot even open a session again.
        assert await error_of(bound_session(c, vol, first)) == errno.EROFS
        assert await error_of(bound_session(c, vol, second + 1)) == errno.EROFS
    meta.run(body)


def test_fence_and_bindings_are_checked(meta):
    async def body(c):
        vol = (await make_dir(c, ROOT, b"vol"))["ino"]
        f = (await make_file(c, ROOT, b"f"))["ino"]
        assert await error_of(c.call("fence", ino=f)) == errno.ENOTDIR
        assert await error_of(c.call("fence", ino=999_999)) == errno.ENOENT
        assert await error_of(bound_session(c, f, 1)) == errno.ENOTDIR
        epoch = (await c.call("fence", ino=vol))["epoch"]
        for fence in ([vol], [vol, epoch, 1], [vol, -1], [0, epoch], [vol, "1"], [vol, True]):
            assert await error_of(c.call("session_open", host="h", mountpoint="/m", pid=1,
                                         fence=fence)) == errno.EINVAL
        # A retried fence (same token) is answered once, not moved twice.
        token = os.urandom(16)
        again = (await c.call("fence", ino=vol, token=token))["epoch"]
        assert (await c.call("fence", ino=vol, token=token))["epoch"] == again == epoch + 1
        # Other directories keep their own epochs.
        other = (await make_dir(c, ROOT, b"other"))["ino"]
        assert (await c.call("fence", ino=other))["epoch"] == 1
        await bound_session(c, vol, again)
    meta.run(body)


def test_epochs_and_bindings_survive_a_restart_and_fencing_waits_out_old_leases(meta_factory):
    meta = meta_factory(lease_seconds=3)

    async def before(c):
        vol = (await make_dir(c, ROOT, b"vol"))["ino"]
        epoch = (await c.call("fence", ino=vol))["epoch"]
        return vol, epoch, await bound_session(c, vol, epoch)

    vol, epoch, sid = meta.run(before)
    meta.restart()

    async def after(c):
        # The session is bound still, to the epoch that survived.
        await c.call("mkdir", parent=vol, name=b"d", mode=0o755, uid=0, gid=0, writer=sid)
        # Its leases from before the restart are unknown: no fence until they lapse.
        assert await error_of(c.call("fence", ino=vol)) == errno.EAGAIN
        other = (await make_dir(c, ROOT, b"other"))["ino"]
        assert (await c.call("fence", ino=other))["epoch"] == 1
        with trio.fail_after(10):
            while True:
                try:
                    moved = (await c.call("fence", ino=vol))["epoch"]
                    break
                except DfsError as exc:
                    assert exc.errno == errno.EAGAIN
                    await trio.sleep(0.2)
        assert moved == epoch + 1
        assert await error_of(c.call("mkdir", parent=vol, name=b"e", mode=0o755, uid=0, gid=0,
                                     writer=sid)) == errno.EROFS
        await bound_session(c, vol, moved)
    meta.run(after)
