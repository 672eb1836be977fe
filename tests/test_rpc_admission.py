"""A server bounds what one connection has running at once, by count and by bytes,
so a client that floods it with large requests cannot make it hold more than that."""

import pytest
import trio

from dfs.framing import MAX_DATA
from dfs.ops import Op
from dfs.rpc import MAX_BYTES_IN_FLIGHT, Client, Server

SECRET = b"admission-test-secret"
SCHEMA = {"hold": Op("hold", {"data": bytes}, idempotent=True)}


class Holding:
    """A handler that keeps every request running until told to let go."""

    def __init__(self):
        self.running = 0
        self.most = 0
        self.release = trio.Event()
        self.changed = trio.Event()

    async def hold(self, data: bytes) -> dict:
        self.running += 1
        self.most = max(self.most, self.running)
        self.changed.set()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return {"length": len(data)}

    async def settled(self) -> int:
        """Wait until no new request has started for a while; return how many run."""
        while True:
            self.changed = trio.Event()
            with trio.move_on_after(0.5):
                await self.changed.wait()
                continue
            return self.running


async def flood(payload: int, count: int) -> tuple[int, int, list[int]]:
    holding = Holding()
    server = Server("admission", SCHEMA, {"hold": holding.hold}, SECRET)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        client = Client(f"{host}:{port}", SECRET, SCHEMA)
        replies: list[int] = []

        async def one():
            reply = await client.call("hold", data=bytes(payload))
            replies.append(reply["length"])

        async with trio.open_nursery() as senders:
            for _ in range(count):
                senders.start_soon(one)
            admitted = await holding.settled()
            holding.release.set()
        await client.aclose()
        nursery.cancel_scope.cancel()
    return admitted, holding.most, replies


@pytest.mark.timeout(60)
def test_large_requests_wait_beyond_the_byte_budget_and_all_complete():
    admitted, most, replies = trio.run(flood, MAX_DATA, 40)
    fit = MAX_BYTES_IN_FLIGHT // (MAX_DATA + 64)
    assert admitted == most == fit, (admitted, most, fit)
    assert replies == [MAX_DATA] * 40


@pytest.mark.timeout(60)
def test_small_requests_are_not_held_back():
    admitted, most, replies = trio.run(flood, 100, 200)
    assert admitted == most == 200
    assert replies == [100] * 200


@pytest.mark.timeout(60)
def test_the_server_counts_requests_in_hand_from_receipt_to_reply():
    async def main():
        holding = Holding()
        server = Server("admission", SCHEMA, {"hold": holding.hold}, SECRET)
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1", 0)
            client = Client(f"{host}:{port}", SECRET, SCHEMA)
            async with trio.open_nursery() as senders:
                for _ in range(5):
                    senders.start_soon(lambda: client.call("hold", data=b"x"))
                assert await holding.settled() == 5
                assert server.in_hand["hold"] == 5
                holding.release.set()
            assert server.in_hand["hold"] == 0
            await client.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
