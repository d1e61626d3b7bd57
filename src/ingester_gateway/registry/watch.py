"""A node view kept in memory from Redis: a full load at start and every
`refresh_interval`, plus an immediate reload when the source announces a change on
its pub/sub channel. Redis going away never blocks a reader: the last view stays,
marked stale, while the loops reconnect with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from ingester_gateway.observability import get_logger
from ingester_gateway.registry import NodeRecord
from ingester_gateway.resilience import Backoff
from ingester_gateway.runtime.redis_io import REDIS_ERRORS
from ingester_gateway.runtime.stopping import StopSignal, stop_tasks

Loader = Callable[[aioredis.Redis], Awaitable[list[NodeRecord]]]
_log = get_logger("ingester_gateway.registry")
# ValueError: a malformed node document
_LOAD_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, ValueError)
# Redis away: reconnect after 0.05-0.2 s, doubling up to 5 s.
_BACKOFF = Backoff(base=0.2, cap=5.0, floor=0.05)
STOP_CHECK_SECONDS = 0.2


class RedisWatchedRegistry:
    def __init__(
        self,
        client: aioredis.Redis,
        load: Loader,
        channel: str,
        *,
        refresh_interval: float = 2.0,
        name: str = "redis",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._load = load
        self._channel = channel
        self._interval = refresh_interval
        self._clock = clock
        self._rng = random.Random()
        self.name = name
        self._nodes: list[NodeRecord] = []
        self._last_ok: float | None = None
        self._failing = False
        self._wake = asyncio.Event()
        self._stop = StopSignal()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.refresh()  # best effort: a Redis that is down at start is retried
        self._tasks = [
            asyncio.create_task(self._refresh_loop(), name=f"{self.name}-refresh"),
            asyncio.create_task(self._listen_loop(), name=f"{self.name}-listen"),
        ]

    async def stop(self) -> None:
        self._wake.set()
        await stop_tasks(self._tasks, self._stop)
        self._tasks = []

    def nodes(self) -> list[NodeRecord]:
        if self.is_stale():
            return self._nodes  # heartbeats cannot arrive while Redis is away: keep all
        now = self._clock()
        return [n for n in self._nodes if n.expires_at is None or n.expires_at >= now]

    def is_stale(self) -> bool:
        if self._failing or self._last_ok is None:
            return True
        return self._clock() - self._last_ok > 3 * self._interval

    async def refresh(self) -> bool:
        try:
            self._nodes = await self._load(self._redis)
        except _LOAD_ERRORS as exc:
            if not self._failing:
                _log.warning("registry_unreachable", source=self.name, error=str(exc))
            self._failing = True
            return False
        if self._failing:
            _log.info("registry_reachable", source=self.name)
        self._failing = False
        self._last_ok = self._clock()
        return True

    async def _refresh_loop(self) -> None:
        failures = 0
        while not self._stop.is_set:
            wait = _BACKOFF.delay(failures, self._rng) if failures else self._interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set:
                return
            failures = 0 if await self.refresh() else failures + 1

    async def _listen_loop(self) -> None:
        failures = 0
        while not self._stop.is_set:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                failures = 0
                self._wake.set()  # changes may have been missed while disconnected
                while not self._stop.is_set:
                    # Short waits: stop() is noticed within one (CPython #86296 makes
                    # cancelling a redis-py wait unreliable, see runtime/stopping.py).
                    message = await pubsub.get_message(timeout=STOP_CHECK_SECONDS)
                    if message is not None:
                        self._wake.set()
            except REDIS_ERRORS:
                failures += 1
                await self._stop.sleep(_BACKOFF.delay(failures, self._rng))
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
