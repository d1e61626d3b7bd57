"""The reference SE keeps its own record in the gateways' Redis registry: registered at
start, re-announced every `interval` with fresh capacity, removed on clean shutdown.

Redis being away never touches uploads: the heartbeat runs beside them, every command
gives up after a short timeout, an outage is logged once and retried with backoff, and
the SE registers again (with a `registered` event) as soon as Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from ingester_gateway.observability import get_logger
from ingester_gateway.registry.redis import NODE_KEY, Event, NodeAnnouncement, RedisNodeBook
from ingester_gateway.resilience import Backoff
from ingester_gateway.runtime.redis_io import REDIS_ERRORS

_log = get_logger("ingester_gateway.reference.storage_element")
REDIS_TIMEOUT = 0.5  # seconds any one heartbeat command may take


@dataclass(frozen=True, slots=True)
class Registration:
    """Where and how an SE announces itself (`--redis-url`, `--public-url`, ...)."""

    redis_url: str
    public_url: str  # the URL gateways use to reach this SE
    interval: float = 1.0
    ttl: float = 5.0


class NodeHeartbeat:
    def __init__(
        self,
        book: RedisNodeBook,
        describe: Callable[[], NodeAnnouncement],
        interval: float,
        *,
        deregister_timeout: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._book = book
        self._describe = describe
        self._interval = interval
        self._deregister_timeout = deregister_timeout
        self._backoff = Backoff(base=interval, cap=max(interval, 5.0))
        self._rng = rng or random.Random()
        self._announced: NodeAnnouncement | None = None  # None until Redis holds our record
        self._failures = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin beating in the background; startup never waits for Redis."""
        self._task = asyncio.create_task(self._run(), name="se-heartbeat")

    async def stop(self) -> None:
        """Stop beating and delete the record, so gateways stop choosing this SE now;
        if Redis is away the record simply expires within its TTL."""
        # Not task.cancel(): on 3.11 redis-py's wait_for can swallow it (CPython #86296);
        # the loop ends its beat and exits, so no announce lands after the delete below.
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        node_id = self._describe().id
        try:
            async with asyncio.timeout(self._deregister_timeout):
                await self._book.remove(node_id)
        except REDIS_ERRORS as exc:
            _log.warning("registry_deregister_failed", node_id=node_id, error=str(exc))
        finally:
            await self._book.redis.aclose()

    async def beat(self) -> None:
        """One announcement with the current capacity; raises when Redis is away."""
        node = self._describe()
        await self._book.announce(node, await self._event_for(node))
        self._announced = node

    async def _event_for(self, node: NodeAnnouncement) -> Event | None:
        previous = self._announced
        # The record is also missing after a Redis restart, a lapse or `nodes remove`.
        if previous is None or not await self._book.redis.exists(NODE_KEY.format(node.id)):
            return "registered"
        if (previous.mode, previous.status) != (node.mode, node.status):
            return "updated"
        return None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.beat()
            except REDIS_ERRORS as exc:
                self._announced = None
                self._failures += 1
                if self._failures == 1:
                    _log.warning("registry_heartbeat_failed", error=str(exc))
                await self._pause(self._backoff.delay(self._failures, self._rng))
                continue
            if self._failures:
                _log.info("registry_heartbeat_restored", failed_beats=self._failures)
                self._failures = 0
            await self._pause(self._interval)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
