"""Namespace operations of a real metaserver and their errno cases."""

import errno
import stat

import pytest
import trio

from test_metaserver_support import (ROOT, error_of, make_dir, make_file, meta, meta_factory,
                                     names)

pytestmark = pytest.mark.timeout(60)
__all__ = ["meta", "meta_factory"]


def test_create_lookup_getattr_and_kinds(meta):
    async def body(c):
        root = await c.call("getattr", ino=ROOT)
        assert root["mode"] == stat.S_IFDIR | 0o755 and root["uid"] == 0
        assert root["nlink"] == 2

        f = await c.call("mknod", parent=ROOT, name=b"f", mode=stat.S_IFREG | 0o640, rdev=0,
                         uid=1000, gid=100)
        assert stat.S_ISREG(f["mode"]) and f["mode"] & 0o7777 == 0o640
        assert (f["uid"], f["gid"], f["nlink"], f["size"], f["blocks"]) == (1000, 100, 1, 0, 0)
        found = await c.call("lookup", parent=ROOT, name=b"f")
        assert {k: v for k, v in found.items() if k != "offset"} == {
            k: v for k, v in f.items() if k != "dirs"}

        fifo = await c.call("mknod", parent=ROOT, name=b"fifo", mode=stat.S_IFIFO | 0o600,
                            rdev=0, uid=0, gid=0)
        assert stat.S_ISFIFO(fifo["mode"])
        sock = await c.call("mknod", parent=ROOT, name=b"sock", mode=stat.S_IFSOCK | 0o600,
                            rdev=0, uid=0, gid=0)
        assert stat.S_ISSOCK(sock["mode"])
        dev = await c.call("mknod", parent=ROOT, name=b"dev", mode=stat.S_IFCHR | 0o600,
                           rdev=0x0103, uid=0, gid=0)
        assert stat.S_ISCHR(dev["mode"]) and dev["rdev"] == 0x0103
        blk = await c.call("mknod", parent=ROOT, name=b"blk", mode=stat.S_IFBLK | 0o600,
                           rdev=0x0801, uid=0, gid=0)
        assert stat.S_ISBLK(blk["mode"]) and blk["rdev"] == 0x0801

        d = await make_dir(c, ROOT, b"d")
        assert stat.S_ISDIR(d["mode"]) and d["nlink"] == 2
        assert (await c.call("getattr", ino=ROOT))["nlink"] == 3

        s = await c.call("symlink", parent=ROOT, name=b"s", target=b"d/../f", uid=0, gid=0)
        assert stat.S_ISLNK(s["mode"]) and s["size"] == len(b"d/../f")
        assert await c.call("readlink", ino=s["ino"]) == {"target": b"d/../f"}
        assert await error_of(c.call("readlink", ino=f["ino"])) == errno.EINVAL

        assert await names(c, ROOT) == sorted([b"f", b"fifo", b"sock", b"dev", b"blk", b"d",
                                               b"s"])
        assert (await c.call("resolve", path=b"/d/../f"))["ino"] == f["ino"]
        assert (await c.call("resolve", path=b"/"))["ino"] == ROOT
        assert await error_of(c.call("resolve", path=b"/nope")) == errno.ENOENT
        assert await error_of(c.call("resolve", path=b"/f/x")) == errno.ENOTDIR

    meta.run(body)


def test_name_and_parent_errors(meta):
    async def body(c):
        await make_file(c, ROOT, b"f")
        await make_dir(c, ROOT, b"d")
        f = await c.call("lookup", parent=ROOT, name=b"f")
        for bad, err in [(b"", errno.EINVAL), (b"a/b", errno.EINVAL), (b"a\0b", errno.EINVAL),
                         (b".", errno.EEXIST), (b"..", errno.EEXIST), (b"x" * 256,
                                                                       errno.ENAMETOOLONG)]:
            assert await error_of(make_file(c, ROOT, bad)) == err, bad
            assert await error_of(make_dir(c, ROOT, bad)) == err, bad
        assert await error_of(make_file(c, ROOT, b"y" * 255)) == 0
        assert await error_of(make_file(c, ROOT, b"f")) == errno.EEXIST
        assert await error_of(make_dir(c, ROOT, b"d")) == errno.EEXIST
        assert await error_of(make_file(c, f["ino"], b"x")) == errno.ENOTDIR
        assert await error_of(make_file(c, 99999, b"x")) == errno.ENOENT
        assert await error_of(c.call("lookup", parent=ROOT, name=b"zz")) == errno.ENOENT
        assert await error_of(c.call("getattr", ino=424242)) == errno.ENOENT
        assert await error_of(c.call("mknod", parent=ROOT, name=b"dd", mode=stat.S_IFDIR,
                                     rdev=0, uid=0, gid=0)) == errno.EINVAL
        assert await error_of(c.call("symlink", parent=ROOT, name=b"s", target=b"", uid=0,
                                     gid=0)) == errno.EINVAL

    meta.run(body)


def test_link_unlink_rmdir(meta):
    async def body(c):
        d = await make_dir(c, ROOT, b"d")
        f = await make_file(c, ROOT, b"f")
        before = await c.call("getattr", ino=ROOT)
        await trio.sleep(0.01)
        linked = await c.call("link", ino=f["ino"], parent=d["ino"], name=b"g")
        assert linked["nlink"] == 2 and linked["ctime"] > f["ctime"]
        assert (await c.call("getattr", ino=d["ino"]))["mtime"] > d["mtime"]
        assert await error_of(c.call("link", ino=d["ino"], parent=ROOT, name=b"dl")) == errno.EPERM
        assert await error_of(c.call("link", ino=f["ino"], parent=ROOT, name=b"d")) == errno.EEXIST

        assert await error_of(c.call("unlink", parent=ROOT, name=b"d")) == errno.EISDIR
        assert await error_of(c.call("unlink", parent=ROOT, name=b"nope")) == errno.ENOENT
        await c.call("unlink", parent=ROOT, name=b"f")
        assert (await c.call("getattr", ino=f["ino"]))["nlink"] == 1
        assert (await c.call("getattr", ino=ROOT))["mtime"] > before["mtime"]

        assert await error_of(c.call("rmdir", parent=ROOT, name=b"d")) == errno.ENOTEMPTY
        assert await error_of(c.call("rmdir", parent=d["ino"], name=b"g")) == errno.ENOTDIR
        await c.call("unlink", parent=d["ino"], name=b"g")
        assert await error_of(c.call("getattr", ino=f["ino"])) == errno.ENOENT
        await c.call("rmdir", parent=ROOT, name=b"d")
        assert await error_of(c.call("rmdir", parent=ROOT, name=b"d")) == errno.ENOENT
        assert (await c.call("getattr", ino=ROOT))["nlink"] == 2
        assert await names(c, ROOT) == []

    meta.run(body)


def test_changes_answer_with_the_folders_they_changed(meta):
    """Each reply carries the attributes of the folders the change touched, as
    a getattr right after it finds them."""
    async def body(c):
        async def dirs_after(op, moved=(), **args):
            reply = await c.call(op, **args)
            made = [reply["ino"]] if op == "mkdir" else []
            expected = [await c.call("getattr", ino=ino) for ino in sorted(
                {args["parent"], args.get("newparent", args["parent"]), *moved, *made})]
            assert reply["dirs"] == expected, op
            return reply

        a = await dirs_after("mkdir", parent=ROOT, name=b"a", mode=0o755, uid=0, gid=0)
        b = await make_dir(c, ROOT, b"b")
        f = await dirs_after("mknod", parent=a["ino"], name=b"f", mode=stat.S_IFREG | 0o644,
                             rdev=0, uid=0, gid=0)
        await dirs_after("symlink", parent=a["ino"], name=b"s", target=b"f", uid=0, gid=0)
        await dirs_after("link", ino=f["ino"], parent=b["ino"], name=b"g")
        await dirs_after("rename", parent=a["ino"], name=b"f", newparent=b["ino"],
                         newname=b"h", flags=0)
        await dirs_after("unlink", parent=b["ino"], name=b"g")
        await dirs_after("unlink", parent=a["ino"], name=b"s")
        sub = await dirs_after("mkdir", parent=a["ino"], name=b"sub", mode=0o755, uid=0, gid=0)
        assert next(d for d in sub["dirs"] if d["ino"] == a["ino"])["nlink"] == 3
        # A folder that moves is among those changed, and so are both of an exchange.
        await dirs_after("mknod", parent=b["ino"], name=b"x", mode=stat.S_IFREG | 0o644,
                         rdev=0, uid=0, gid=0)
        await dirs_after("rename", moved=[sub["ino"]], parent=a["ino"], name=b"sub",
                         newparent=b["ino"], newname=b"x", flags=2)
        await dirs_after("rename", moved=[sub["ino"]], parent=b["ino"], name=b"x",
                         newparent=a["ino"], newname=b"sub", flags=2)
        other = await make_dir(c, b["ino"], b"other")
        await dirs_after("rename", moved=[sub["ino"], other["ino"]], parent=a["ino"],
                         name=b"sub", newparent=b["ino"], newname=b"other", flags=2)
        await dirs_after("rename", moved=[other["ino"]], parent=a["ino"], name=b"sub",
                         newparent=a["ino"], newname=b"moved", flags=0)
        await dirs_after("rmdir", parent=a["ino"], name=b"moved")

    meta.run(body)


def test_rename_plain_flags_and_loops(meta):
    async def body(c):
        a = await make_dir(c, ROOT, b"a")
        b = await make_dir(c, a["ino"], b"b")
        f = await make_file(c, ROOT, b"f")
        g = await make_file(c, ROOT, b"g")

        await c.call("rename", parent=ROOT, name=b"f", newparent=a["ino"], newname=b"f2",
                     flags=0)
        assert await names(c, a["ino"]) == [b"b", b"f2"]
        assert (await c.call("lookup", parent=a["ino"], name=b"f2"))["ino"] == f["ino"]

        # Replacing a file drops the old one.
        await c.call("rename", parent=ROOT, name=b"g", newparent=a["ino"], newname=b"f2",
                     flags=0)
        assert await error_of(c.call("getattr", ino=f["ino"])) == errno.ENOENT
        assert (await c.call("lookup", parent=a["ino"], name=b"f2"))["ino"] == g["ino"]

        await make_file(c, ROOT, b"h")
        assert await error_of(c.call("rename", parent=ROOT, name=b"h", newparent=a["ino"],
                                     newname=b"f2", flags=1)) == errno.EEXIST
        assert await error_of(c.call("rename", parent=ROOT, name=b"h", newparent=a["ino"],
                                     newname=b"new", flags=2)) == errno.ENOENT
        await c.call("rename", parent=ROOT, name=b"h", newparent=a["ino"], newname=b"f2",
                     flags=2)
        assert (await c.call("lookup", parent=ROOT, name=b"h"))["ino"] == g["ino"]
        await c.call("rename", parent=ROOT, name=b"h", newparent=ROOT, newname=b"h",
                     flags=0)
        assert await error_of(c.call("rename", parent=ROOT, name=b"h", newparent=ROOT,
                                     newname=b"x", flags=4)) == errno.EINVAL

        # Directories: no loops, type checks, emptiness, nlink of parents.
        assert await error_of(c.call("rename", parent=ROOT, name=b"a", newparent=b["ino"],
                                     newname=b"x", flags=0)) == errno.EINVAL
        assert await error_of(c.call("rename", parent=ROOT, name=b"a", newparent=a["ino"],
                                     newname=b"x", flags=0)) == errno.EINVAL
        assert await error_of(c.call("rename", parent=ROOT, name=b"h", newparent=a["ino"],
                                     newname=b"b", flags=0)) == errno.EISDIR
        assert await error_of(c.call("rename", parent=a["ino"], name=b"b", newparent=ROOT,
                                     newname=b"h", flags=0)) == errno.ENOTDIR
        await make_dir(c, ROOT, b"full")
        full = await c.call("lookup", parent=ROOT, name=b"full")
        await make_file(c, full["ino"], b"x")
        assert await error_of(c.call("rename", parent=a["ino"], name=b"b", newparent=ROOT,
                                     newname=b"full", flags=0)) == errno.ENOTEMPTY
        assert await error_of(c.call("rename", parent=ROOT, name=b"nope", newparent=ROOT,
                                     newname=b"x", flags=0)) == errno.ENOENT

        await c.call("rename", parent=a["ino"], name=b"b", newparent=ROOT, newname=b"b",
                     flags=0)
        assert (await c.call("getattr", ino=a["ino"]))["nlink"] == 2
        assert (await c.call("getattr", ino=ROOT))["nlink"] == 5
        assert (await c.call("resolve", path=b"/b/.."))["ino"] == ROOT

        # Replace an empty directory with another.
        await make_dir(c, ROOT, b"empty")
        await c.call("rename", parent=ROOT, name=b"b", newparent=ROOT, newname=b"empty",
                     flags=0)
        assert (await c.call("lookup", parent=ROOT, name=b"empty"))["ino"] == b["ino"]
        assert (await c.call("getattr", ino=ROOT))["nlink"] == 5

        # Exchange a directory and a file across parents.
        await c.call("rename", parent=ROOT, name=b"empty", newparent=full["ino"],
                     newname=b"x", flags=2)
        assert (await c.call("lookup", parent=full["ino"], name=b"x"))["ino"] == b["ino"]
        assert stat.S_ISREG((await c.call("lookup", parent=ROOT, name=b"empty"))["mode"])
        assert (await c.call("getattr", ino=full["ino"]))["nlink"] == 3
        assert (await c.call("getattr", ino=ROOT))["nlink"] == 4
        assert (await c.call("resolve", path=b"/full/x/.."))["ino"] == full["ino"]
        assert await error_of(c.call("rename", parent=ROOT, name=b"full", newparent=b["ino"],
                                     newname=b"y", flags=2)) == errno.ENOENT

    meta.run(body)


def test_setattr(meta):
    async def body(c):
        f = await make_file(c, ROOT, b"f")
        d = await make_dir(c, ROOT, b"d")
        await trio.sleep(0.01)
        a = await c.call("setattr", ino=f["ino"],
                         changes={"mode": 0o100600 | 0o4000, "uid": 5, "gid": 6,
                                  "atime": 1_000_000_000, "mtime": 2_000_000_000})
        assert stat.S_ISREG(a["mode"]) and a["mode"] & 0o7777 == 0o4600
        assert (a["uid"], a["gid"], a["atime"], a["mtime"]) == (5, 6, 10**9, 2 * 10**9)
        assert a["ctime"] > f["ctime"]
        now = await c.call("setattr", ino=f["ino"], changes={"atime_now": True,
                                                             "mtime_now": True})
        assert now["atime"] >= a["ctime"] and now["mtime"] >= a["ctime"]
        grown = await c.call("setattr", ino=f["ino"], changes={"size": 5 << 20})
        assert grown["size"] == 5 << 20 and grown["blocks"] == 0
        assert (await c.call("setattr", ino=f["ino"], changes={"size": 10}))["size"] == 10
        for bad in ({"size": -1}, {"size": "1"}, {"mode": True}, {"color": 1},
                    {"atime_now": 1}):
            assert await error_of(c.call("setattr", ino=f["ino"], changes=bad)) == errno.EINVAL
        assert await error_of(c.call("setattr", ino=d["ino"],
                                     changes={"size": 0})) == errno.EISDIR
        assert await error_of(c.call("setattr", ino=777, changes={"uid": 1})) == errno.ENOENT

    meta.run(body)


def test_xattrs(meta):
    async def body(c):
        f = await make_file(c, ROOT, b"f")
        ino = f["ino"]
        await c.call("setxattr", ino=ino, name=b"user.a", value=b"1", flags=0)
        assert (await c.call("getattr", ino=ino))["ctime"] >= f["ctime"]
        assert await c.call("getxattr", ino=ino, name=b"user.a") == {"value": b"1"}
        assert await error_of(c.call("setxattr", ino=ino, name=b"user.a", value=b"2",
                                     flags=1)) == errno.EEXIST
        assert await error_of(c.call("setxattr", ino=ino, name=b"user.b", value=b"2",
                                     flags=2)) == errno.ENODATA
        await c.call("setxattr", ino=ino, name=b"user.a", value=b"3", flags=2)
        await c.call("setxattr", ino=ino, name=b"user.b", value=b"x" * 65536, flags=1)
        assert sorted((await c.call("listxattr", ino=ino))["names"]) == [b"user.a", b"user.b"]
        assert await error_of(c.call("setxattr", ino=ino, name=b"user.c",
                                     value=b"x" * 65537, flags=0)) == errno.E2BIG
        assert await error_of(c.call("setxattr", ino=ino, name=b"u" * 256, value=b"",
                                     flags=0)) == errno.ERANGE
        assert await error_of(c.call("getxattr", ino=ino, name=b"user.zz")) == errno.ENODATA
        await c.call("removexattr", ino=ino, name=b"user.a")
        assert await error_of(c.call("removexattr", ino=ino,
                                     name=b"user.a")) == errno.ENODATA
        assert (await c.call("listxattr", ino=ino))["names"] == [b"user.b"]
        assert await error_of(c.call("listxattr", ino=31337)) == errno.ENOENT

    meta.run(body)


def test_readdir_offsets_are_stable_under_change(meta):
    async def body(c):
        d = await make_dir(c, ROOT, b"d")
        ino = d["ino"]
        for i in range(40):
            await make_file(c, ino, b"f%02d" % i)
        originals = {b"f%02d" % i for i in range(40)}
        listed, removed = [], set()
        offset = rounds = 0
        while True:
            page = await c.call("readdir", ino=ino, offset=offset, limit=7)
            for name, _attr, next_offset in page["entries"]:
                assert next_offset > offset
                listed.append(name)
                offset = next_offset
            if page["eof"]:
                break
            # Between pages: remove an entry already listed and one not yet
            # listed, and add a new one.
            done = next(n for n in listed if n not in removed)
            pending = sorted(originals - set(listed) - removed)[-1:]
            for victim in [done, *pending]:
                await c.call("unlink", parent=ino, name=victim)
                removed.add(victim)
            await make_file(c, ino, b"new%02d" % rounds)
            rounds += 1
        assert len(listed) == len(set(listed)), "an entry was listed twice"
        assert originals - removed <= set(listed), "a surviving entry was skipped"
        assert not set(pending) & set(listed), "a removed entry was listed"
        # Each entry has the same offset on a later listing.
        page = await c.call("readdir", ino=ino, offset=0, limit=1000)
        offsets = [e[2] for e in page["entries"]]
        assert offsets == sorted(offsets) and page["eof"]
        mid = page["entries"][10]
        again = await c.call("readdir", ino=ino, offset=mid[2], limit=1)
        assert again["entries"][0][0] == page["entries"][11][0]
        # A lookup tells where readdir lists the name.
        assert (await c.call("lookup", parent=ino, name=mid[0]))["offset"] == mid[2]
        assert await error_of(c.call("readdir", ino=ino, offset=0, limit=0)) == errno.EINVAL
        f = await c.call("lookup", parent=ino, name=b"new00")
        assert await error_of(c.call("readdir", ino=f["ino"], offset=0,
                                     limit=5)) == errno.ENOTDIR

    meta.run(body)


def test_concurrent_creates_are_group_committed(meta):
    async def body(c):
        d = await make_dir(c, ROOT, b"many")

        async def create(i):
            await make_file(c, d["ino"], b"file%d" % i)

        async with trio.open_nursery() as nursery:
            for i in range(1200):
                nursery.start_soon(create, i)
        assert len(await names(c, d["ino"])) == 1200
        status = await c.call("status")
        assert status["files"] == 1200 and status["directories"] == 2
        assert status["commits"] < 600, "concurrent creates share synced commits"

    meta.run(body)


def test_racing_creators_of_one_name(meta):
    async def body(c):
        results = []

        async def create(token):
            results.append(await error_of(c.call("mkdir", parent=ROOT, name=b"race",
                                                 mode=0o755, uid=0, gid=0, token=token)))

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(create, b"distinct-%d" % i)
        assert sorted(results) == [0] + [errno.EEXIST] * 39

        # The same token sent twice at once (a retry racing the original) is
        # applied once, and both get the original's reply.
        results.clear()
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(create, b"one-token")
        assert results == [errno.EEXIST, errno.EEXIST]
        replies = []

        async def unlink_once():
            replies.append(await error_of(c.call("rmdir", parent=ROOT, name=b"race",
                                                 token=b"rm-token")))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(unlink_once)
        assert replies == [0, 0, 0]
        assert await names(c, ROOT) == []

    meta.run(body)
