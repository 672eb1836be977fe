"""Directory leases on the wire: grants, recalls, releases and expiry
(metaserver/dirleases.py), against a real metaserver."""

import errno

import pytest
import trio

from metaserver.dirleases import LEASE, MAX_LEASES_PER_SESSION, MAX_NAME_BYTES, NAME_OVERHEAD
from test_metaserver_support import (ROOT, error_of, make_dir, make_file, meta, meta_factory,
                                     new_session)

pytestmark = pytest.mark.timeout(60)
__all__ = ["meta", "meta_factory"]


async def _poll(c, session, released=(), wait=0.0) -> dict:
    return await c.call("dir_poll", session=session, released=list(released), wait=wait)


async def _leased(c, name: bytes) -> tuple[int, int, int, dict]:
    """Two sessions and a folder holding a file `name`, leased to the first:
    (holder, other, folder, the grant)."""
    holder, other = await new_session(c), await new_session(c)
    folder = (await make_dir(c, ROOT, b"d"))["ino"]
    await make_file(c, folder, name)
    return holder, other, folder, await c.call("dir_lease", session=holder, ino=folder)


async def _make_in(c, folder: int, name: bytes, writer: int | None, done: list) -> None:
    await make_file(c, folder, name, writer=writer)
    done.append(name)


def test_a_change_waits_until_the_holder_lets_go(meta):
    async def body(c):
        holder, other, folder, grant = await _leased(c, b"old")
        assert grant["names"] == [b"old"] and grant["lease"] == LEASE
        done = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_make_in, c, folder, b"new", other, done)
            recall = (await _poll(c, holder, wait=5.0))["recall"]
            assert recall == [[folder, grant["number"]]]
            # The change is committed but not answered while the lease is held.
            assert done == []
            reply = await _poll(c, holder, released=recall)
            assert reply["held"] == []
        assert done == [b"new"]
        # A new grant has the new name.
        assert sorted((await c.call("dir_lease", session=holder, ino=folder))["names"]) == [
            b"new", b"old"]

    meta.run(body)


def test_the_holders_own_changes_and_removals_recall_nothing(meta):
    async def body(c):
        holder, other, folder, grant = await _leased(c, b"x")
        number = grant["number"]
        await make_file(c, folder, b"mine", writer=holder)
        await c.call("rename", parent=folder, name=b"mine", newparent=folder, newname=b"m2",
                     flags=0, writer=holder)
        await c.call("unlink", parent=folder, name=b"x", writer=other)
        reply = await _poll(c, holder)
        assert reply["recall"] == [] and reply["held"] == [number]
        # A change made for no session (the dfs command's) recalls every lease.
        async with trio.open_nursery() as nursery:
            done = []
            nursery.start_soon(_make_in, c, folder, b"by-nobody", None, done)
            recall = (await _poll(c, holder, wait=5.0))["recall"]
            assert recall == [[folder, number]] and done == []
            await _poll(c, holder, released=recall)
        assert done == [b"by-nobody"]

    meta.run(body)


def test_a_holder_that_never_answers_delays_a_change_by_one_lease(meta):
    async def body(c):
        holder, other = await new_session(c), await new_session(c)
        folder = (await make_dir(c, ROOT, b"d"))["ino"]
        await c.call("dir_lease", session=holder, ino=folder)
        with trio.fail_after(LEASE + 10):
            await make_file(c, folder, b"new", writer=other)
        assert (await _poll(c, holder))["held"] == []
        status = await c.call("status")
        assert status["sessions"] == 2

    meta.run(body)


def test_a_holder_that_polls_but_never_lets_go_loses_its_lease(meta):
    async def body(c):
        holder, other, folder, grant = await _leased(c, b"x")
        done = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_make_in, c, folder, b"new", other, done)
            with trio.fail_after(LEASE + 10):
                while not done:
                    reply = await _poll(c, holder, wait=0.5)
                    if reply["recall"]:
                        # Recalled: no longer its to use, and not renewed.
                        assert reply["held"] == []
        assert (await _poll(c, holder))["held"] == []

    meta.run(body)


def test_grants_are_told_apart_by_number(meta):
    async def body(c):
        holder = await new_session(c)
        folder = (await make_dir(c, ROOT, b"d"))["ino"]
        first = (await c.call("dir_lease", session=holder, ino=folder))["number"]
        second = (await c.call("dir_lease", session=holder, ino=folder))["number"]
        assert second != first
        # Releasing the first lets go of nothing: the folder is held under the second.
        assert (await _poll(c, holder, released=[[folder, first]]))["held"] == [second]
        assert (await _poll(c, holder, released=[[folder, second]]))["held"] == []

    meta.run(body)


def test_leases_end_with_their_session(meta):
    async def body(c):
        holder, other, folder, _ = await _leased(c, b"x")
        done = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_make_in, c, folder, b"waiting", other, done)
            assert (await _poll(c, holder, wait=5.0))["recall"]
            # A change waiting for the lease goes on when the session ends.
            await c.call("session_close", session=holder)
            with trio.fail_after(LEASE / 2):
                while not done:
                    await trio.sleep(0.05)
        holder = await new_session(c)
        await c.call("dir_lease", session=holder, ino=folder)
        await c.call("session_close", session=holder)
        with trio.fail_after(LEASE / 2):
            await make_file(c, folder, b"new", writer=other)
        assert await error_of(_poll(c, holder)) == errno.ESTALE
        assert await error_of(c.call("dir_lease", session=holder, ino=folder)) == errno.ESTALE

    meta.run(body)


def test_what_cannot_be_leased_is_refused(meta):
    async def body(c):
        holder = await new_session(c)
        file = await make_file(c, ROOT, b"f")
        assert await error_of(c.call("dir_lease", session=holder, ino=file["ino"])) == (
            errno.ENOTDIR)
        assert await error_of(c.call("dir_lease", session=holder, ino=999999)) == errno.ENOENT
        assert await error_of(_poll(c, holder, released=[[1]])) == errno.EINVAL
        assert await error_of(_poll(c, holder, released=[["a", 1]])) == errno.EINVAL
        for wait in (-1.0, float("nan"), 1e9):
            assert await error_of(_poll(c, holder, wait=wait)) == errno.EINVAL

        big = (await make_dir(c, ROOT, b"big"))["ino"]
        long_name = 250
        async with trio.open_nursery() as nursery:
            for i in range(MAX_NAME_BYTES // (long_name + NAME_OVERHEAD) + 1):
                nursery.start_soon(make_file, c, big, b"%08d" % i + b"n" * (long_name - 8))
        assert await error_of(c.call("dir_lease", session=holder, ino=big)) == errno.EFBIG
        assert (await _poll(c, holder))["held"] == []

        folders = []
        async with trio.open_nursery() as nursery:
            async def make(i):
                folders.append((await make_dir(c, ROOT, b"d%d" % i))["ino"])
            for i in range(MAX_LEASES_PER_SESSION + 1):
                nursery.start_soon(make, i)
        for folder in folders[:MAX_LEASES_PER_SESSION]:
            await c.call("dir_lease", session=holder, ino=folder)
        assert await error_of(c.call("dir_lease", session=holder, ino=folders[-1])) == (
            errno.EMFILE)

    meta.run(body)


def test_after_a_restart_changes_wait_until_restored_sessions_are_heard(meta):
    async def before(c):
        holder = await new_session(c)
        folder = (await make_dir(c, ROOT, b"d"))["ino"]
        await c.call("dir_lease", session=holder, ino=folder)
        return holder, folder

    holder, folder = meta.run(before)
    meta.restart()

    async def after(c):
        # The holder may still trust its lease of the last run until it has
        # spoken to this one (having let go of everything when it reconnected).
        done = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_make_in, c, folder, b"new", None, done)
            await trio.sleep(LEASE / 6)
            assert done == [], "a change did not wait for a restored session"
            await c.call("session_renew", session=holder)
        assert done == [b"new"]

    meta.run(after)
