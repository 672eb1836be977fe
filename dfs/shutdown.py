"""How a server process runs until it is told to stop."""

import signal
from typing import Awaitable, Callable

import trio


async def run_until_signalled(log, start: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    """Run `start(nursery)`, then wait for SIGTERM or SIGINT and cancel
    everything it started. The signals are caught from before `start`, so one
    sent while the server is starting still stops it cleanly."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await start(nursery)
            async for signum in signals:
                log.info("shutting down", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
