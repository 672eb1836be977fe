"""Directory quotas: exact usage, EDQUOT, EXDEV, statfs and reservations."""

import errno
import random

import pytest

from dfs.errors import DfsError

from test_metaserver_support import (ROOT, error_of, make_dir, make_file, meta, meta_factory,
                                     new_session)

pytestmark = pytest.mark.timeout(60)
__all__ = ["meta", "meta_factory"]

MiB = 1 << 20


async def usage(c, ino):
    info = await c.call("quota_get", ino=ino)
    return info["bytes_used"], info["inodes_used"]


async def grow(c, session, ino, size):
    await c.call("reserve", ino=ino, session=session, end=size)
    return await c.call("commit", ino=ino, session=session, size=size, mtime=1)


def test_quota_counts_and_limits_inodes(meta):
    async def body(c):
        vol = await make_dir(c, ROOT, b"vol")
        f = await make_file(c, ROOT, b"outside")
        assert await error_of(c.call("quota_set", ino=f["ino"], bytes=1,
                                     inodes=1)) == errno.ENOTDIR
        assert await error_of(c.call("quota_get", ino=vol["ino"])) == errno.ENODATA
        assert await error_of(c.call("quota_set", ino=vol["ino"], bytes=-1,
                                     inodes=0)) == errno.EINVAL

        sub = await make_dir(c, vol["ino"], b"sub")
        await make_file(c, sub["ino"], b"a")
        s = await new_session(c)
        a = await c.call("lookup", parent=sub["ino"], name=b"a")
        await grow(c, s, a["ino"], 3000)

        info = await c.call("quota_set", ino=vol["ino"], bytes=0, inodes=4)
        assert (info["bytes_used"], info["inodes_used"]) == (3000, 2)
        assert info["path"] == "/vol" and info["inodes_limit"] == 4

        await make_file(c, vol["ino"], b"b")
        await c.call("symlink", parent=sub["ino"], name=b"l", target=b"a", uid=0, gid=0)
        assert await usage(c, vol["ino"]) == (3000, 4)
        assert await error_of(make_file(c, vol["ino"], b"c")) == errno.EDQUOT
        assert await error_of(make_dir(c, sub["ino"], b"d")) == errno.EDQUOT
        assert await error_of(c.call("symlink", parent=vol["ino"], name=b"m", target=b"x",
                                     uid=0, gid=0)) == errno.EDQUOT
        # Hard links add no inode.
        await c.call("link", ino=a["ino"], parent=vol["ino"], name=b"alink")
        assert await usage(c, vol["ino"]) == (3000, 4)

        await c.call("unlink", parent=vol["ino"], name=b"alink")
        assert await usage(c, vol["ino"]) == (3000, 4)
        await c.call("unlink", parent=sub["ino"], name=b"a")
        assert await usage(c, vol["ino"]) == (0, 3)
        await make_file(c, vol["ino"], b"c")

        listed = (await c.call("quota_list"))["quotas"]
        assert [(q["ino"], q["path"], q["inodes_used"]) for q in listed] == [
            (vol["ino"], "/vol", 4)]

    meta.run(body)


def test_byte_quota_reserve_commit_truncate(meta):
    async def body(c):
        vol = await make_dir(c, ROOT, b"vol")
        await c.call("quota_set", ino=vol["ino"], bytes=10 * MiB, inodes=0)
        s1, s2 = await new_session(c), await new_session(c)
        f = await make_file(c, vol["ino"], b"f", session=s1)
        g = await make_file(c, vol["ino"], b"g", session=s2)

        granted = (await c.call("reserve", ino=f["ino"], session=s1, end=2 * MiB))["granted"]
        assert granted == 10 * MiB, "the grant reaches ahead, up to what the quota allows"
        # What another session asked for counts against what is left (the
        # lookahead beyond it does not).
        assert (await c.call("reserve", ino=g["ino"], session=s2, end=8 * MiB))["granted"] \
            == 8 * MiB
        await c.call("release", ino=g["ino"], session=s2)
        await c.call("reserve", ino=f["ino"], session=s1, end=6 * MiB)
        assert await error_of(c.call("reserve", ino=g["ino"], session=s2,
                                     end=5 * MiB)) == errno.EDQUOT
        attr = await c.call("commit", ino=f["ino"], session=s1, size=6 * MiB, mtime=123)
        assert attr["size"] == 6 * MiB and attr["mtime"] == 123
        assert await usage(c, vol["ino"]) == (6 * MiB, 2)
        await c.call("release", ino=f["ino"], session=s1)

        # Commit keeps the larger size; growth past the quota is refused.
        assert (await c.call("commit", ino=f["ino"], session=s1, size=MiB,
                             mtime=5))["size"] == 6 * MiB
        assert await error_of(c.call("commit", ino=g["ino"], session=s2, size=5 * MiB,
                                     mtime=5)) == errno.EDQUOT
        assert await error_of(c.call("setattr", ino=g["ino"],
                                     changes={"size": 4 * MiB + 1})) == errno.EDQUOT
        await c.call("setattr", ino=g["ino"], changes={"size": 4 * MiB})
        assert await usage(c, vol["ino"]) == (10 * MiB, 2)
        await c.call("setattr", ino=f["ino"], changes={"size": MiB})
        assert await usage(c, vol["ino"]) == (5 * MiB, 2)
        assert (await c.call("reserve", ino=g["ino"], session=s2,
                             end=9 * MiB))["granted"] >= 9 * MiB
        assert await error_of(c.call("reserve", ino=f["ino"], session=s1,
                                     end=2 * MiB)) == errno.EDQUOT

        # Without a quota, reservations are generous.
        free = await make_file(c, ROOT, b"free")
        assert (await c.call("reserve", ino=free["ino"], session=s1,
                             end=100 * MiB))["granted"] > 100 * MiB
        assert await error_of(c.call("reserve", ino=free["ino"], session=12345,
                                     end=1)) == errno.ESTALE

    meta.run(body)


def test_reservations_hold_room_only_under_their_own_quotas(meta):
    async def body(c):
        outer = await make_dir(c, ROOT, b"outer")
        inner = await make_dir(c, outer["ino"], b"inner")
        other = await make_dir(c, ROOT, b"other")
        for folder in (outer, inner, other):
            await c.call("quota_set", ino=folder["ino"], bytes=10 * MiB, inodes=0)
        s1, s2 = await new_session(c), await new_session(c)
        a = (await make_file(c, inner["ino"], b"a", session=s1))["ino"]
        b = (await make_file(c, outer["ino"], b"b", session=s2))["ino"]
        x = (await make_file(c, other["ino"], b"x", session=s2))["ino"]

        await c.call("reserve", ino=a, session=s1, end=8 * MiB)
        # Held against inner and outer, not against another volume.
        assert (await c.call("reserve", ino=x, session=s2, end=10 * MiB))["granted"] \
            == 10 * MiB
        assert await error_of(c.call("reserve", ino=b, session=s2, end=3 * MiB)) \
            == errno.EDQUOT
        assert (await c.call("reserve", ino=b, session=s2, end=2 * MiB))["granted"] \
            == 2 * MiB
        assert await error_of(c.call("commit", ino=b, session=s2, size=3 * MiB,
                                     mtime=1)) == errno.EDQUOT
        # A grant asked again replaces the first; a release drops it.
        await c.call("reserve", ino=a, session=s1, end=MiB)
        assert (await c.call("reserve", ino=b, session=s2, end=9 * MiB))["granted"] \
            == 9 * MiB
        await c.call("release", ino=b, session=s2)
        await c.call("reserve", ino=a, session=s1, end=10 * MiB)
        # A session's end drops every grant it held.
        await c.call("session_close", session=s1)
        assert (await c.call("reserve", ino=b, session=s2, end=10 * MiB))["granted"] \
            == 10 * MiB

    meta.run(body)


def test_a_new_file_comes_with_a_first_grant(meta):
    async def body(c):
        vol = await make_dir(c, ROOT, b"vol")
        await c.call("quota_set", ino=vol["ino"], bytes=10 * MiB, inodes=0)
        s = await new_session(c)
        f = await make_file(c, vol["ino"], b"f", session=s)
        assert f["granted"] == 10 * MiB, "as far as the quota allows"
        # What other writers asked for is left out; nothing is held for it.
        await c.call("reserve", ino=f["ino"], session=s, end=6 * MiB)
        g = await make_file(c, vol["ino"], b"g", session=s)
        assert g["granted"] == 4 * MiB
        assert (await c.call("reserve", ino=f["ino"], session=s,
                             end=10 * MiB))["granted"] == 10 * MiB
        # None left: its first write asks, and is refused.
        h = await make_file(c, vol["ino"], b"h", session=s)
        assert h["granted"] == 0
        # A first grant holds nothing: each new file may reach the whole room.
        small = await make_dir(c, ROOT, b"small")
        await c.call("quota_set", ino=small["ino"], bytes=MiB, inodes=0)
        for name in (b"a", b"b"):
            assert (await make_file(c, small["ino"], name, session=s))["granted"] == MiB
        assert await error_of(c.call("reserve", ino=h["ino"], session=s,
                                     end=1)) == errno.EDQUOT

        # Without a quota it is generous. Only a file held open gets one.
        assert (await make_file(c, ROOT, b"free", session=s))["granted"] == 1 << 30
        assert "granted" not in await make_file(c, ROOT, b"unheld")
        fifo = await c.call("mknod", parent=ROOT, name=b"fifo", mode=0o010644, rdev=0,
                            uid=0, gid=0, session=s)
        assert "granted" not in fifo

    meta.run(body)


def test_rename_moves_usage_and_refuses_directories_across_quotas(meta):
    async def body(c):
        a = await make_dir(c, ROOT, b"a")
        b = await make_dir(c, ROOT, b"b")
        await c.call("quota_set", ino=a["ino"], bytes=10 * MiB, inodes=10)
        await c.call("quota_set", ino=b["ino"], bytes=3 * MiB, inodes=10)
        s = await new_session(c)
        f = await make_file(c, a["ino"], b"f")
        await grow(c, s, f["ino"], 2 * MiB)
        big = await make_file(c, a["ino"], b"big")
        await grow(c, s, big["ino"], 4 * MiB)
        await make_dir(c, a["ino"], b"sub")

        await c.call("rename", parent=a["ino"], name=b"f", newparent=b["ino"], newname=b"f",
                     flags=0)
        assert await usage(c, a["ino"]) == (4 * MiB, 2)
        assert await usage(c, b["ino"]) == (2 * MiB, 1)
        assert await error_of(c.call("rename", parent=a["ino"], name=b"big",
                                     newparent=b["ino"], newname=b"big",
                                     flags=0)) == errno.EDQUOT
        assert await error_of(c.call("rename", parent=a["ino"], name=b"sub",
                                     newparent=b["ino"], newname=b"sub",
                                     flags=0)) == errno.EXDEV
        assert await error_of(c.call("rename", parent=a["ino"], name=b"sub",
                                     newparent=ROOT, newname=b"sub", flags=0)) == errno.EXDEV
        assert await error_of(c.call("link", ino=big["ino"], parent=b["ino"],
                                     name=b"l")) == errno.EXDEV
        # Within one quota tree, directories move freely; the quota directory
        # itself may be renamed.
        await c.call("rename", parent=a["ino"], name=b"sub", newparent=a["ino"],
                     newname=b"sub2", flags=0)
        await c.call("rename", parent=ROOT, name=b"a", newparent=ROOT, newname=b"a2", flags=0)
        assert (await c.call("quota_get", ino=a["ino"]))["path"] == "/a2"
        # Replacing a file in the destination frees its space first.
        await c.call("rename", parent=b["ino"], name=b"f", newparent=a["ino"],
                     newname=b"big", flags=0)
        assert await usage(c, a["ino"]) == (2 * MiB, 2)
        assert await usage(c, b["ino"]) == (0, 0)

    meta.run(body)


def test_nested_quotas_and_statfs(meta):
    async def body(c):
        outer = await make_dir(c, ROOT, b"outer")
        inner = await make_dir(c, outer["ino"], b"inner")
        await c.call("quota_set", ino=outer["ino"], bytes=8 * MiB, inodes=0)
        await c.call("quota_set", ino=inner["ino"], bytes=100 * MiB, inodes=50)
        s = await new_session(c)
        f = await make_file(c, inner["ino"], b"f")
        await grow(c, s, f["ino"], 5 * MiB)
        assert await usage(c, outer["ino"]) == (5 * MiB, 2)
        assert await usage(c, inner["ino"]) == (5 * MiB, 1)
        g = await make_file(c, inner["ino"], b"g")
        assert await error_of(c.call("reserve", ino=g["ino"], session=s,
                                     end=4 * MiB)) == errno.EDQUOT

        st = await c.call("statfs", ino=f["ino"])
        assert st["bsize"] == 4096 and st["namemax"] == 255
        assert st["blocks"] == 100 * MiB // 4096
        assert st["bfree"] == st["bavail"] == 95 * MiB // 4096
        assert (st["files"], st["ffree"]) == (50, 48)
        st = await c.call("statfs", ino=outer["ino"])
        assert st["blocks"] == 8 * MiB // 4096 and st["bfree"] == 3 * MiB // 4096
        await c.call("quota_set", ino=outer["ino"], bytes=16 * MiB, inodes=0)
        assert (await c.call("statfs", ino=outer["ino"]))["blocks"] == 16 * MiB // 4096
        # Outside any quota: the cluster (no chunk servers here, so nothing).
        assert (await c.call("statfs", ino=ROOT))["blocks"] == 0

        await c.call("unlink", parent=inner["ino"], name=b"f")
        assert await usage(c, outer["ino"]) == (0, 2)

    meta.run(body)


async def walk_usage(c, ino, seen=None) -> tuple[int, int]:
    """Bytes and inodes beneath a directory, counted from the tree itself."""
    seen = set() if seen is None else seen
    nbytes = ninodes = 0
    page = await c.call("readdir", ino=ino, offset=0, limit=1000)
    for _, attr, _ in page["entries"]:
        if attr["ino"] in seen:
            continue
        seen.add(attr["ino"])
        ninodes += 1
        if attr["mode"] & 0o170000 == 0o040000:
            sub = await walk_usage(c, attr["ino"], seen)
            nbytes, ninodes = nbytes + sub[0], ninodes + sub[1]
        elif attr["mode"] & 0o170000 == 0o100000:
            nbytes += attr["size"]
    return nbytes, ninodes


@pytest.mark.parametrize("seed", [3, 4])
def test_usage_stays_exact_under_random_changes(meta, seed):
    rng = random.Random(seed)

    async def body(c):
        s = await new_session(c)
        outer = await make_dir(c, ROOT, b"outer")
        vols = [outer, await make_dir(c, outer["ino"], b"inner"), await make_dir(c, ROOT, b"v")]
        for vol in vols:
            await c.call("quota_set", ino=vol["ino"], bytes=40 * MiB, inodes=30)
        dirs = [ROOT] + [v["ino"] for v in vols]
        dirs.append((await make_dir(c, vols[1]["ino"], b"sub"))["ino"])
        names = [b"x", b"y", b"z"]
        refusals = set()
        for _ in range(250):
            op = rng.choice(["create", "grow", "grow", "truncate", "unlink", "rename", "link"])
            parent, name = rng.choice(dirs), rng.choice(names)
            try:
                if op == "create":
                    await make_file(c, parent, name)
                    continue
                if op == "rename":
                    await c.call("rename", parent=parent, name=name, newparent=rng.choice(dirs),
                                 newname=rng.choice(names), flags=rng.choice([0, 2]))
                    continue
                if op == "unlink":
                    await c.call("unlink", parent=parent, name=name)
                    continue
                f = await c.call("lookup", parent=parent, name=name)
                if f["mode"] & 0o170000 != 0o100000:
                    continue
                if op == "link":
                    await c.call("link", ino=f["ino"], parent=rng.choice(dirs),
                                 name=rng.choice(names) + b"l")
                elif op == "grow":
                    await grow(c, s, f["ino"], f["size"] + rng.randrange(1, 8 * MiB))
                else:
                    await c.call("setattr", ino=f["ino"],
                                 changes={"size": rng.randrange(0, 12 * MiB)})
            except DfsError as exc:
                assert exc.errno in (errno.ENOENT, errno.EEXIST, errno.EDQUOT, errno.EXDEV,
                                     errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY), exc
                refusals.add(exc.errno)
        assert {errno.EDQUOT, errno.EXDEV} <= refusals, "the limits were reached"
        for vol in vols:
            assert await usage(c, vol["ino"]) == await walk_usage(c, vol["ino"]), vol["ino"]
            info = await c.call("quota_get", ino=vol["ino"])
            assert info["bytes_used"] <= info["bytes_limit"]
            assert info["inodes_used"] <= info["inodes_limit"]

    meta.run(body)
