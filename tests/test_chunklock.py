"""The per-chunk lock: shared holders overlap, exclusive ones are alone, and
waiters are served in arrival order."""

import pytest
import trio
import trio.testing

from chunkserver.chunklock import ChunkLock


async def _hold(lock: ChunkLock, exclusive: bool, name: str, log: list, release: trio.Event):
    await lock.acquire(exclusive)
    log.append(("in", name))
    try:
        await release.wait()
    finally:
        log.append(("out", name))
        lock.release(exclusive)


@pytest.mark.timeout(10)
def test_shared_holders_overlap_and_an_exclusive_waits_for_them():
    async def scenario():
        lock, log = ChunkLock(), []
        readers_done, writer_done = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hold, lock, False, "r1", log, readers_done)
            nursery.start_soon(_hold, lock, False, "r2", log, readers_done)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(log) == [("in", "r1"), ("in", "r2")] and lock.readers == 2
            nursery.start_soon(_hold, lock, True, "w", log, writer_done)
            await trio.testing.wait_all_tasks_blocked()
            assert ("in", "w") not in log, "the writer got in beside readers"
            readers_done.set()
            await trio.testing.wait_all_tasks_blocked()
            assert log[-1] == ("in", "w") and lock.writer and lock.readers == 0
            writer_done.set()
        assert not lock.busy

    trio.run(scenario)


@pytest.mark.timeout(10)
def test_waiters_are_served_in_arrival_order():
    """A read that comes behind a waiting write waits for it, and the write
    that comes behind that read waits for the read."""
    async def scenario():
        lock, log = ChunkLock(), []
        events = {name: trio.Event() for name in ("r1", "w1", "r2", "w2")}
        async with trio.open_nursery() as nursery:
            for name in ("r1", "w1", "r2", "w2"):
                nursery.start_soon(_hold, lock, name.startswith("w"), name, log, events[name])
                await trio.testing.wait_all_tasks_blocked()
            assert log == [("in", "r1")]
            for name in ("r1", "w1", "r2", "w2"):
                events[name].set()
                await trio.testing.wait_all_tasks_blocked()
        assert [name for step, name in log if step == "in"] == ["r1", "w1", "r2", "w2"]
        assert not lock.busy

    trio.run(scenario)


@pytest.mark.timeout(10)
def test_a_cancelled_exclusive_waiter_lets_the_shared_ones_behind_it_in():
    async def scenario():
        lock, log = ChunkLock(), []
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hold, lock, False, "r1", log, done)
            await trio.testing.wait_all_tasks_blocked()
            writer_scope = trio.CancelScope()
            nursery.start_soon(_cancellable, lock, writer_scope)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_hold, lock, False, "r2", log, done)
            await trio.testing.wait_all_tasks_blocked()
            assert ("in", "r2") not in log, "a read passed a waiting write"
            writer_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert ("in", "r2") in log and not lock.writer
            done.set()
        assert not lock.busy

    trio.run(scenario)


async def _cancellable(lock: ChunkLock, scope: trio.CancelScope):
    with scope:
        await lock.acquire(exclusive=True)
        lock.release(exclusive=True)
        raise AssertionError("the writer got the lock while a reader held it")
