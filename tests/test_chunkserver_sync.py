"""Where a chunk server runs a replica's sync (chunkserver/syncpolicy.py):
the policy's rules, and a real ChunkService on a real store following them."""

import errno
import os

import pytest
import trio

from chunkserver.chunkstore import ChunkStore
from chunkserver.service import ChunkService
from chunkserver.syncpolicy import (INLINE_SYNC_BYTES, INLINE_SYNC_SECONDS, RETRY_SECONDS,
                                    SyncPolicy)
from dfs.errors import DfsError


def test_small_known_syncs_run_inline_while_the_disk_is_quick():
    policy = SyncPolicy()
    assert policy.inline(0, 0.0)
    assert policy.inline(INLINE_SYNC_BYTES, 0.0)
    assert not policy.inline(INLINE_SYNC_BYTES + 1, 0.0)
    # Writes made before the replica was opened are unknown in size.
    assert not policy.inline(None, 0.0)
    for now in range(50):
        policy.took(INLINE_SYNC_SECONDS / 4, float(now))
        assert policy.inline(4096, float(now))


def test_a_slow_disk_gets_threads_and_is_tried_again_later():
    policy = SyncPolicy()
    policy.took(0.02, 100.0)     # a disk that spins
    assert not policy.inline(4096, 100.0)
    assert not policy.inline(4096, 100.0 + RETRY_SECONDS / 2)
    assert policy.inline(4096, 100.0 + RETRY_SECONDS)
    # Still slow when tried again: threads for another while.
    policy.took(0.02, 101.0)
    assert not policy.inline(4096, 101.5)


def test_one_slow_sync_among_quick_ones_keeps_them_inline():
    policy = SyncPolicy()
    for now in range(20):
        policy.took(0.0003, float(now))
    policy.took(0.01, 20.0)      # a hiccup: 10 ms once
    assert policy.inline(4096, 20.0)


@pytest.mark.timeout(60)
def test_service_times_small_syncs_on_the_loop_and_hands_big_ones_to_threads(tmp_path):
    store = ChunkStore(tmp_path)
    versions = store.scan()
    service = ChunkService(store, versions, b"s" * 32)

    async def main():
        try:
            await service.create(1, 1)
            # The first sync after opening has unknown writes before it: a thread.
            await service.write(1, 1, 0, b"\x01" * 4096, sync=True)
            assert service.syncs.average is None
            await service.write(1, 1, 4096, b"\x02" * 4096, sync=True)
            timed = service.syncs.average
            assert timed is not None and timed > 0
            await service.write(1, 1, 0, b"\x03" * (INLINE_SYNC_BYTES + 4096), sync=True)
            assert service.syncs.average == timed
            got = await service.read(1, 1, 0, INLINE_SYNC_BYTES + 4096)
            assert bytes(got["data"]) == b"\x03" * (INLINE_SYNC_BYTES + 4096)
        finally:
            await service.aclose()

    trio.run(main)


def test_the_server_says_when_its_disk_turns_slow_and_quick_again(tmp_path, caplog):
    store = ChunkStore(tmp_path)
    service = ChunkService(store, store.scan(), b"s" * 32)
    caplog.set_level("INFO", logger="chunkserver")
    service._timed(INLINE_SYNC_SECONDS / 4, 0.0, 1)
    service._timed(INLINE_SYNC_SECONDS / 4, 1.0, 1)
    assert not caplog.records
    service._timed(40 * INLINE_SYNC_SECONDS, 2.0, 2)
    service._timed(40 * INLINE_SYNC_SECONDS, 3.0, 1)
    for now in range(4, 60):
        service._timed(INLINE_SYNC_SECONDS / 10, float(now), 1)
    said = [(r.getMessage(), r.fields) for r in caplog.records]
    assert [message for message, _ in said] == [
        "small syncs go to worker threads: the disk flushes slowly",
        "small syncs run on the event loop again"]
    assert said[0][1]["syncs"] == 4 and said[0][1]["groups"] == 3
    assert said[0][1]["average_ms"] > INLINE_SYNC_SECONDS * 1000
    assert said[1][1]["average_ms"] <= INLINE_SYNC_SECONDS * 1000


def test_a_group_of_syncs_is_timed_per_sync():
    policy = SyncPolicy()
    policy.took(4 * INLINE_SYNC_SECONDS / 2, 0.0, count=4)
    assert policy.average == INLINE_SYNC_SECONDS / 2
    assert (policy.synced, policy.groups) == (4, 1)
    assert policy.inline(4096, 0.0)


async def _together(service, writes):
    """Writes with sync, (chunk, offset, data) each, handed over as the server
    hands over requests that arrive together: all counted in hand
    (rpc.Server.in_hand) before the first runs, each until it is answered.
    Returns {chunk: 0 or the errno it failed with}."""
    service.in_hand["write"] += len(writes)
    outcomes = {}

    async def one(chunk, offset, data):
        try:
            await service.write(chunk, 1, offset, data, sync=True)
            outcomes[chunk] = 0
        except DfsError as exc:
            outcomes[chunk] = exc.errno
        finally:
            service.in_hand["write"] -= 1

    async with trio.open_nursery() as nursery:
        for write in writes:
            nursery.start_soon(one, *write)
    return outcomes


def _run_on_warm_service(tmp_path, chunks, body) -> None:
    """Run `body(service)` on a service on a real store, with `chunks` created
    and each synced once (the first sync after opening goes to a thread)."""
    store = ChunkStore(tmp_path)
    service = ChunkService(store, store.scan(), b"s" * 32)

    async def main():
        try:
            for chunk in chunks:
                await service.create(chunk, 1)
                await service.write(chunk, 1, 0, b"\0" * 4096, sync=True)
            await body(service)
        finally:
            await service.aclose()

    trio.run(main)


@pytest.mark.timeout(60)
def test_writes_with_sync_that_arrive_together_are_synced_as_one_group(tmp_path):
    chunks = range(1, 5)

    async def body(service):
        before = (service.syncs.synced, service.syncs.groups)
        outcomes = await _together(service, [(c, 8192, bytes([c]) * 4096) for c in chunks])
        assert outcomes == {c: 0 for c in chunks}
        assert (service.syncs.synced - before[0], service.syncs.groups - before[1]) == (4, 1)
        for chunk in chunks:
            got = await service.read(chunk, 1, 8192, 4096)
            assert bytes(got["data"]) == bytes([chunk]) * 4096
        # One at a time, each is a group of its own.
        assert await _together(service, [(1, 0, b"\x07" * 4096)]) == {1: 0}
        await service.sync(2, 1)
        assert service.syncs.groups - before[1] == 3

    _run_on_warm_service(tmp_path, chunks, body)


@pytest.mark.timeout(60)
def test_a_failed_sync_in_a_group_fails_only_its_own_request(tmp_path):
    chunks = range(1, 4)

    async def body(service):
        # Chunk 2's data file is swapped for /dev/null under the server's
        # feet: writes to it succeed, its fdatasync fails (EINVAL).
        broken = await service._replica(2)
        os.close(broken.data_fd)
        broken.data_fd = os.open(os.devnull, os.O_RDWR)
        before = service.syncs.groups
        outcomes = await _together(service, [(c, 0, b"\x05" * 4096) for c in chunks])
        assert outcomes == {1: 0, 2: errno.EINVAL, 3: 0}
        assert service.syncs.groups == before + 1

    _run_on_warm_service(tmp_path, chunks, body)
