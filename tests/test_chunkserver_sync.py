"""Where a chunk server runs a replica's sync (chunkserver/syncpolicy.py):
the policy's rules, and a real ChunkService on a real store following them."""

import pytest
import trio

from chunkserver.chunkstore import ChunkStore
from chunkserver.service import ChunkService
from chunkserver.syncpolicy import (INLINE_SYNC_BYTES, INLINE_SYNC_SECONDS, RETRY_SECONDS,
                                    SyncPolicy)


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
