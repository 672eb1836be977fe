"""The RPC client's own life cycle: closing it ends every connection it has,
also one it is still setting up after a reconnect."""

import errno

import pytest
import trio

from dfs.errors import DfsError
from dfs.ops import Op
from dfs.rpc import Client, Server

SECRET = b"rpc-client-test-secret"
SCHEMA = {"ping": Op("ping", {}, idempotent=True),
          "hold": Op("hold", {}, idempotent=True)}

pytestmark = pytest.mark.timeout(30)


def test_aclose_during_on_reconnect_ends_the_new_connection():
    async def main():
        async def ping():
            return {}

        async def hold():
            await trio.sleep_forever()

        handlers = {"ping": ping, "hold": hold}
        reannouncing = trio.Event()

        async def on_reconnect(call):
            reannouncing.set()
            # A re-announce the server never answers, as if it were slow.
            await call("hold")

        port = 0   # any free one at first, then the same again

        async def serve(scope, *, task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await Server("test", SCHEMA, handlers, SECRET).serve(
                    "127.0.0.1", port, task_status=task_status)

        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()
            host, port = await nursery.start(serve, first)
            client = Client(f"{host}:{port}", SECRET, SCHEMA, on_reconnect=on_reconnect,
                            retry_for=5.0)
            await client.call("ping")
            first.cancel()   # the server goes away with its connections...
            await nursery.start(serve, trio.CancelScope())   # ...and comes back
            outcome = []

            async def caller():
                try:
                    await client.call("ping")
                except DfsError as exc:
                    outcome.append(exc.errno)

            nursery.start_soon(caller)
            await reannouncing.wait()
            with trio.fail_after(5):
                await client.aclose()
                while not outcome:
                    await trio.sleep(0.01)
            assert outcome == [errno.ESHUTDOWN]
            nursery.cancel_scope.cancel()

    trio.run(main)
