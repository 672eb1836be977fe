"""Changes made ahead on the wire: exclusive folder leases, inode_grant and
changes_ahead (metaserver/dirleases.py, metaserver/service.py), against a real
metaserver."""

import errno
import os
import time

import pytest
import trio

from metaserver.dirleases import LEASE
from test_metaserver_support import (ROOT, error_of, make_dir, make_file, meta, meta_factory,
                                     names, new_session)

pytestmark = pytest.mark.timeout(60)
__all__ = ["meta", "meta_factory"]


async def _poll(c, session, released=(), wait=0.0) -> dict:
    return await c.call("dir_poll", session=session, released=list(released), wait=wait)


def _item(parent: int, name: bytes, ino: int, hold: bool = False) -> list:
    return ["create", parent, name, 0o640, 7, 8, ino, time.time_ns(), hold]


async def _exclusive(c) -> tuple[int, int, dict, int]:
    """A session holding an exclusive lease on a new folder, and inode numbers
    granted to it: (session, folder, grant, first number)."""
    session = await new_session(c)
    folder = (await make_dir(c, ROOT, b"d"))["ino"]
    grant = await c.call("dir_lease", session=session, ino=folder, exclusive=True)
    assert grant["exclusive"] and grant["attr"]["ino"] == folder
    first = (await c.call("inode_grant", session=session, count=16))["first"]
    return session, folder, grant, first


def test_files_made_ahead_take_their_granted_numbers(meta):
    async def body(c):
        session, folder, _, first = await _exclusive(c)
        made = time.time_ns() - 10**9
        items = [["create", folder, b"a", 0o640, 7, 8, first, made, True],
                 _item(folder, b"b", first + 1)]
        reply = await c.call("changes_ahead", session=session, items=items, token=os.urandom(16))
        [[error_a, attr_a], [error_b, attr_b]] = reply["results"]
        assert error_a == error_b == 0
        assert (attr_a["ino"], attr_a["mode"], attr_a["uid"], attr_a["gid"]) == (
            first, 0o100640, 7, 8)
        assert attr_a["mtime"] == attr_a["ctime"] == made
        assert attr_b["ino"] == first + 1
        assert [d["ino"] for d in attr_a["dirs"]] == [folder]
        assert sorted(await names(c, folder)) == [b"a", b"b"]
        looked = await c.call("lookup", parent=folder, name=b"a", reader=session)
        assert looked["ino"] == first

    meta.run(body)


def test_changes_ahead_refuses_what_it_must_and_applies_the_rest(meta):
    async def body(c):
        session, folder, _, first = await _exclusive(c)
        other = await new_session(c)
        await make_file(c, folder, b"taken", writer=session)
        items = [_item(folder, b"ok", first), _item(folder, b"taken", first + 1),
                 _item(folder, b"stolen", first + 100), _item(folder, b"x/y", first + 2),
                 _item(folder, b"dup", first)]
        results = (await c.call("changes_ahead", session=session, items=items))["results"]
        assert [error for error, _ in results] == [
            0, errno.EEXIST, errno.EINVAL, errno.EINVAL, errno.EEXIST]
        assert sorted(await names(c, folder)) == [b"ok", b"taken"]
        # Numbers granted to one session are not another's.
        assert (await c.call("changes_ahead", session=other,
                             items=[_item(folder, b"z", first + 3)]))["results"][0][0] \
            == errno.EINVAL
        for bad in ([], [[folder, b"n"]], [_item(folder, b"n", first)[:-1] + [1]],
                    [["unlink", folder, b"n"]], [["chmod", folder, b"n", 0]], [[]],
                    [[["unlink"], folder, b"n", 0]], [7],
                    [_item(folder, b"n", first + 4)] * 1025):
            assert await error_of(c.call("changes_ahead", session=session, items=bad)) \
                == errno.EINVAL
        assert await error_of(c.call("inode_grant", session=session, count=0)) == errno.EINVAL
        assert await error_of(c.call("inode_grant", session=session, count=5000)) \
            == errno.EINVAL

    meta.run(body)


def test_changes_ahead_of_every_kind(meta):
    async def body(c):
        session, folder, _, first = await _exclusive(c)
        now = time.time_ns()
        items = [_item(folder, b"f", first),
                 ["mkdir", folder, b"sub", 0o750, 7, 8, first + 1, now],
                 ["rename", folder, b"f", b"g", now], _item(folder, b"gone", first + 2),
                 ["unlink", folder, b"gone", now], ["rename", folder, b"sub", b"g", now],
                 ["unlink", folder, b"sub", now], ["unlink", folder, b"never", now]]
        results = (await c.call("changes_ahead", session=session, items=items))["results"]
        assert [error for error, _ in results] == [0, 0, 0, 0, 0, errno.EEXIST, errno.EISDIR,
                                                   errno.ENOENT]
        sub = results[1][1]
        assert (sub["ino"], sub["mode"], sub["nlink"]) == (first + 1, 0o40750, 2)
        assert {d["ino"]: d["nlink"] for d in sub["dirs"]} == {folder: 3, first + 1: 2}
        assert results[2][1]["dirs"][0]["mtime"] == now
        assert sorted(await names(c, folder)) == [b"g", b"sub"]
        assert (await c.call("lookup", parent=folder, name=b"g"))["ino"] == first
        assert await error_of(c.call("getattr", ino=first + 2)) == errno.ENOENT

    meta.run(body)


def test_a_retried_changes_ahead_is_answered_as_the_first(meta):
    async def body(c):
        session, folder, _, first = await _exclusive(c)
        token = os.urandom(16)
        items = [_item(folder, b"once", first), _item(folder, b"twice", first + 1)]
        first_reply = await c.call("changes_ahead", session=session, items=items, token=token)
        again = await c.call("changes_ahead", session=session, items=items, token=token)
        assert again == first_reply
        assert [error for error, _ in again["results"]] == [0, 0]

    meta.run(body)


def test_others_wait_until_the_exclusive_holder_lets_go(meta):
    async def body(c):
        session, folder, grant, first = await _exclusive(c)
        other = await new_session(c)
        seen = []

        async def look(op, **args):
            seen.append((op, await c.call(op, **args)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: look("readdir", ino=folder, offset=0, limit=100,
                                            reader=other))
            nursery.start_soon(lambda: look("getattr", ino=folder))
            recall = (await _poll(c, session, wait=5.0))["recall"]
            assert recall == [[folder, grant["number"]]]
            await trio.sleep(0.2)
            assert seen == [], "another session looked in before the holder let go"
            # The holder's own requests go on meanwhile.
            assert await error_of(c.call("lookup", parent=folder, name=b"none",
                                         reader=session)) == errno.ENOENT
            results = (await c.call("changes_ahead", session=session,
                                    items=[_item(folder, b"late", first)]))["results"]
            assert results[0][0] == 0
            await _poll(c, session, released=recall)
        listing = dict(seen)["readdir"]
        assert [entry[0] for entry in listing["entries"]] == [b"late"]

    meta.run(body)


def test_an_exclusive_grant_recalls_the_other_leases_first(meta):
    async def body(c):
        holder, other = await new_session(c), await new_session(c)
        folder = (await make_dir(c, ROOT, b"d"))["ino"]
        shared = await c.call("dir_lease", session=other, ino=folder)
        granted = []

        async def ask():
            granted.append(await c.call("dir_lease", session=holder, ino=folder,
                                        exclusive=True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            recall = (await _poll(c, other, wait=5.0))["recall"]
            assert recall == [[folder, shared["number"]]]
            await trio.sleep(0.2)
            assert granted == []
            await _poll(c, other, released=recall)
        assert granted[0]["exclusive"]
        # The other session's next lease recalls the exclusive one.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: c.call("dir_lease", session=other, ino=folder))
            recall = (await _poll(c, holder, wait=5.0))["recall"]
            assert recall == [[folder, granted[0]["number"]]]
            await _poll(c, holder, released=recall)

    meta.run(body)


def test_a_silent_exclusive_holder_delays_others_by_one_lease(meta):
    async def body(c):
        _, folder, _, _ = await _exclusive(c)
        started = trio.current_time()
        assert await error_of(c.call("lookup", parent=folder, name=b"x")) == errno.ENOENT
        waited = trio.current_time() - started
        assert LEASE - 0.5 <= waited <= LEASE + 5

    meta.run(body)


def test_no_exclusive_lease_where_a_quota_counts_inodes(meta):
    async def body(c):
        session = await new_session(c)
        folder = (await make_dir(c, ROOT, b"q"))["ino"]
        inner = (await make_dir(c, folder, b"inner"))["ino"]
        await c.call("quota_set", ino=folder, bytes=0, inodes=100)
        grant = await c.call("dir_lease", session=session, ino=inner, exclusive=True)
        assert grant["exclusive"] is False and "attr" not in grant
        await c.call("quota_set", ino=folder, bytes=1 << 30, inodes=0)
        grant = await c.call("dir_lease", session=session, ino=inner, exclusive=True)
        assert grant["exclusive"] is True

    meta.run(body)


def test_a_session_end_frees_its_exclusive_leases_and_numbers(meta):
    async def body(c):
        session, folder, _, first = await _exclusive(c)
        await c.call("session_close", session=session)
        # No wait: the lease went with the session.
        with trio.fail_after(LEASE - 1):
            assert await error_of(c.call("lookup", parent=folder, name=b"x")) == errno.ENOENT
        newer = await new_session(c)
        results = (await c.call("changes_ahead", session=newer,
                                items=[_item(folder, b"x", first)]))["results"]
        assert results[0][0] == errno.EINVAL

    meta.run(body)
