"""Sessions, unlinked-but-open files, request tokens and restarts."""

import errno

import pytest
import trio

from test_metaserver_support import (ROOT, error_of, make_dir, make_file, meta, meta_factory,
                                     names, new_session)

pytestmark = pytest.mark.timeout(60)
__all__ = ["meta", "meta_factory"]


def test_unlinked_file_lives_while_open(meta):
    async def body(c):
        s1, s2 = await new_session(c), await new_session(c)
        f = await make_file(c, ROOT, b"f", session=s1)
        ino = f["ino"]
        await c.call("open", ino=ino, session=s2)
        await c.call("unlink", parent=ROOT, name=b"f")
        assert (await c.call("getattr", ino=ino))["nlink"] == 0
        assert (await c.call("commit", ino=ino, session=s1, size=100, mtime=9))["size"] == 100
        await c.call("release", ino=ino, session=s1)
        assert (await c.call("getattr", ino=ino))["size"] == 100
        await c.call("release", ino=ino, session=s2)
        assert await error_of(c.call("getattr", ino=ino)) == errno.ENOENT
        assert await error_of(c.call("open", ino=ino, session=s1)) == errno.ENOENT

        # Renaming over an open file keeps it too; closing the session frees it.
        g = await make_file(c, ROOT, b"g", session=s1)
        await make_file(c, ROOT, b"h")
        await c.call("rename", parent=ROOT, name=b"h", newparent=ROOT, newname=b"g", flags=0)
        assert (await c.call("getattr", ino=g["ino"]))["nlink"] == 0
        await c.call("session_close", session=s1)
        assert await error_of(c.call("getattr", ino=g["ino"])) == errno.ENOENT
        assert await error_of(c.call("session_renew", session=s1)) == errno.ESTALE
        assert await error_of(c.call("open", ino=ROOT, session=s1)) == errno.ESTALE
        assert await error_of(c.call("mknod", parent=ROOT, name=b"x", mode=0o100644, rdev=0,
                                     uid=0, gid=0, session=777)) == errno.ESTALE
        assert (await c.call("status"))["sessions"] == 1

    meta.run(body)


def test_expired_session_releases_its_files(meta_factory):
    meta = meta_factory(session_ttl=1)

    async def body(c):
        idle, busy = await new_session(c), await new_session(c)
        f = await make_file(c, ROOT, b"f", session=idle)
        g = await make_file(c, ROOT, b"g", session=busy)
        await c.call("unlink", parent=ROOT, name=b"f")
        await c.call("unlink", parent=ROOT, name=b"g")
        deadline = trio.current_time() + 3
        while trio.current_time() < deadline:
            await c.call("session_renew", session=busy)
            await trio.sleep(0.2)
        assert await error_of(c.call("getattr", ino=f["ino"])) == errno.ENOENT
        assert await error_of(c.call("session_renew", session=idle)) == errno.ESTALE
        assert (await c.call("getattr", ino=g["ino"]))["nlink"] == 0

    meta.run(body)


def test_restart_keeps_everything(meta):
    async def build(c):
        s = await new_session(c)
        d = await make_dir(c, ROOT, b"dir")
        await c.call("quota_set", ino=d["ino"], bytes=1 << 30, inodes=100)
        f = await make_file(c, d["ino"], b"file", session=s)
        await c.call("commit", ino=f["ino"], session=s, size=12345, mtime=77)
        await c.call("setxattr", ino=f["ino"], name=b"user.k", value=b"v", flags=0)
        await c.call("symlink", parent=d["ino"], name=b"link", target=b"file", uid=1, gid=2)
        orphan = await make_file(c, d["ino"], b"orphan", session=s)
        await c.call("unlink", parent=d["ino"], name=b"orphan")
        listing = await c.call("readdir", ino=d["ino"], offset=0, limit=100)
        token_reply = await c.call("mkdir", parent=ROOT, name=b"tok", mode=0o700, uid=0,
                                   gid=0, token=b"token-1")
        return s, d, f, orphan, listing, token_reply

    s, d, f, orphan, listing, token_reply = meta.run(build)
    meta.restart()

    async def check(c):
        # As a mount does on reconnecting: re-announce, then carry on.
        await c.call("open", ino=orphan["ino"], session=s, count=1)
        await c.call("session_renew", session=s)
        assert (await c.call("resolve", path=b"/dir/file"))["size"] == 12345
        assert await c.call("getxattr", ino=f["ino"], name=b"user.k") == {"value": b"v"}
        link = await c.call("resolve", path=b"/dir/link")
        assert await c.call("readlink", ino=link["ino"]) == {"target": b"file"}
        assert await c.call("readdir", ino=d["ino"], offset=0, limit=100) == listing
        quota = await c.call("quota_get", ino=d["ino"])
        assert (quota["bytes_used"], quota["inodes_used"]) == (12345, 2)
        assert (await c.call("getattr", ino=orphan["ino"]))["nlink"] == 0
        again = await c.call("mkdir", parent=ROOT, name=b"tok", mode=0o700, uid=0, gid=0,
                             token=b"token-1")
        assert again == token_reply
        await c.call("release", ino=orphan["ino"], session=s)
        assert await error_of(c.call("getattr", ino=orphan["ino"])) == errno.ENOENT
        new = await make_file(c, ROOT, b"new")
        assert new["ino"] > orphan["ino"], "inode numbers are never reused"

    meta.run(check)


def test_token_answers_a_retry_from_memory(meta):
    async def body(c):
        first = await c.call("mkdir", parent=ROOT, name=b"d", mode=0o755, uid=0, gid=0,
                             token=b"t1")
        assert await c.call("mkdir", parent=ROOT, name=b"d", mode=0o755, uid=0, gid=0,
                            token=b"t1") == first
        assert await error_of(c.call("mkdir", parent=ROOT, name=b"d", mode=0o755, uid=0,
                                     gid=0, token=b"t2")) == errno.EEXIST
        # A failure is remembered too, so a retry cannot succeed by accident.
        assert await error_of(c.call("rmdir", parent=ROOT, name=b"nope",
                                     token=b"t3")) == errno.ENOENT
        await make_dir(c, ROOT, b"nope")
        assert await error_of(c.call("rmdir", parent=ROOT, name=b"nope",
                                     token=b"t3")) == errno.ENOENT
        renamed = await c.call("rename", parent=ROOT, name=b"d", newparent=ROOT,
                               newname=b"e", flags=0, token=b"t4")
        assert await c.call("rename", parent=ROOT, name=b"d", newparent=ROOT, newname=b"e",
                            flags=0, token=b"t4") == renamed
        assert await names(c, ROOT) == [b"e", b"nope"]

    meta.run(body)


def test_sigterm_exits_cleanly_and_data_dir_is_reusable(meta):
    async def body(c):
        await make_file(c, ROOT, b"x")

    meta.run(body)
    assert meta.stop() == 0
    assert (meta.data_dir / "meta.lmdb").exists()
    meta.start()
    assert meta.run(lambda c: names(c, ROOT)) == [b"x"]
    assert (meta.base / "meta.ready").read_text().strip() == meta.addr
