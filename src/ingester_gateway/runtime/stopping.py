"""Stopping background loops that talk to Redis.

On Python 3.11, `asyncio.wait_for` (used inside redis-py) can lose a cancel that
arrives just as the awaited call completes (cpython#86296): a loop stopped only by
`task.cancel()` may then run on and hang shutdown. Loops here check a StopSignal after
every await; cancel is only the fallback, and stopping never waits unboundedly."""

from __future__ import annotations

import asyncio
import contextlib


class StopSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    async def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, or less when asked to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()


async def stop_tasks(
    tasks: list[asyncio.Task[None]], signal: StopSignal, grace: float = 2.0
) -> None:
    """Ask the loops to stop; after `grace` seconds cancel what still runs, and give
    up waiting on it after one more second."""
    signal.set()
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, pending_set = await asyncio.wait(pending, timeout=grace)
        for task in pending_set:
            task.cancel()
        if pending_set:
            await asyncio.wait(pending_set, timeout=1.0)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a loop that died is not an unhandled error
