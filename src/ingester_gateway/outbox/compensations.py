"""Compensations that failed are not forgotten: each becomes an item of a durable
backlog, retried with backoff until the file is gone.

    ingester:compensations          sorted set: item JSON, scored by its next attempt time
    ingester:compensations:attempts hash: item id -> failed attempts so far (for backoff)
    ingester:compensation-lease:ID  SET NX PX: the one gateway working item ID right now

Several gateways share the backlog; a lease makes each item worked by one of them
at a time. When Redis cannot be reached (or is not configured), items wait in the
local journal; the reconciler moves them to Redis once it answers, or, without Redis,
works them itself. The same loop delivers journaled `file.uploaded` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
import redis.asyncio as aioredis

from ingester_gateway.observability import Metrics, get_logger
from ingester_gateway.outbox.events import EventPublisher
from ingester_gateway.outbox.journal import Journal, PendingCompensation, PendingEvent
from ingester_gateway.registry import NodeRecord
from ingester_gateway.resilience import Backoff
from ingester_gateway.runtime.redis_io import REDIS_ERRORS
from ingester_gateway.runtime.stopping import StopSignal, stop_tasks

BACKLOG = "ingester:compensations"
ATTEMPTS = "ingester:compensations:attempts"
LEASE = "ingester:compensation-lease:{}"
LEASE_MS = 30_000
BATCH = 20

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_log = get_logger("ingester_gateway.outbox.compensations")
_item = msgspec.json.Decoder(PendingCompensation)

# Deletes a file on a node: True once it is gone (or never was there).
Deleter = Callable[[NodeRecord, str], Awaitable[bool]]


# A failed delete waits 0.5-2 s, then up to twice as long each time, at most 5 minutes.
RETRY_BACKOFF = Backoff(base=2.0, cap=300.0, floor=0.5)


class CompensationBacklog:
    def __init__(
        self,
        client: aioredis.Redis | None,
        journal: Journal,
        delete: Deleter,
        events: EventPublisher,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._journal = journal
        self._delete = delete
        self._events = events
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock
        self._owner = uuid.uuid4().hex  # this process, as a lease holder
        self._release = client.register_script(_RELEASE) if client is not None else None
        self._local_due: dict[str, float] = {}  # journal items worked here (no Redis)
        self._local_attempts: dict[str, int] = {}
        self._remote_items = 0  # backlog items in Redis when it last answered
        self._task: asyncio.Task[None] | None = None
        self._stop = StopSignal()

    # -- adding ------------------------------------------------------------------

    async def add(self, node: NodeRecord, file_id: str, reason: str) -> None:
        """Record a delete still owed to `node`; durable before this returns."""
        item = PendingCompensation(
            id=uuid.uuid4().hex,
            node_id=node.id,
            node_url=node.url,
            file_id=file_id,
            reason=reason,
            created_at=self._clock(),
        )
        if self._redis is not None:
            try:
                await self._schedule(item, self._clock())
                return
            except REDIS_ERRORS:
                pass
        try:
            await self._journal.append(item)
        except OSError as exc:  # nowhere durable left: say so loudly, with what to delete
            _log.critical(
                "compensation_lost",
                node=node.id,
                node_url=node.url,
                file_id=file_id,
                error=str(exc),
            )

    async def _schedule(self, item: PendingCompensation, at: float) -> None:
        assert self._redis is not None
        await self._redis.zadd(BACKLOG, {msgspec.json.encode(item): at})

    # -- working -----------------------------------------------------------------

    async def start(self, interval: float = 1.0) -> None:
        self._task = asyncio.create_task(self._loop(interval), name="compensation-backlog")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], self._stop)
            self._task = None

    async def _loop(self, interval: float) -> None:
        while not self._stop.is_set:
            try:
                await self.work_once()
            except REDIS_ERRORS:
                pass  # Redis is away: the journal holds what is new; try again later
            except Exception:
                _log.exception("backlog_round_failed")
            await self._update_gauges()  # also while Redis is away: the journal's share
            await self._stop.sleep(interval)

    async def work_once(self) -> None:
        """One round: drain the journal, then work the due backlog items."""
        await self._drain_journal()
        if self._redis is not None:
            await self._work_redis()

    async def _drain_journal(self) -> None:
        now = self._clock()
        for entry in self._journal.pending():
            if isinstance(entry, PendingEvent):
                if await self._delivered(entry):
                    await self._journal.done(entry.id)
            elif await self._moved_to_redis(entry, now):
                await self._journal.done(entry.id)
            elif self._local_due.get(entry.id, 0.0) <= now:
                # No Redis (configured or answering): work it from here meanwhile.
                await self._attempt_local(entry, now)

    async def _delivered(self, entry: PendingEvent) -> bool:
        if not self._events.enabled:
            return True  # nowhere to deliver it any more (Redis no longer configured)
        try:
            await self._events.deliver(entry.event)
        except REDIS_ERRORS:
            return False
        return True

    async def _moved_to_redis(self, item: PendingCompensation, now: float) -> bool:
        if self._redis is None:
            return False
        try:
            await self._schedule(item, now)
        except REDIS_ERRORS:
            return False
        return True

    async def _attempt_local(self, item: PendingCompensation, now: float) -> None:
        if await self._delete(_node_of(item), item.file_id):
            await self._journal.done(item.id)
            self._local_due.pop(item.id, None)
            self._local_attempts.pop(item.id, None)
            _log.info("compensation_done", node=item.node_id, file_id=item.file_id)
            return
        attempts = self._local_attempts.get(item.id, 0) + 1
        self._local_attempts[item.id] = attempts
        self._local_due[item.id] = now + RETRY_BACKOFF.delay(attempts, self._rng)

    async def _work_redis(self) -> None:
        assert self._redis is not None
        now = self._clock()
        due = await self._redis.zrangebyscore(BACKLOG, "-inf", now, start=0, num=BATCH)
        for raw in due:
            if not isinstance(raw, bytes):
                continue
            try:
                item = _item.decode(raw)
            except msgspec.DecodeError:
                await self._redis.zrem(BACKLOG, raw)
                continue
            lease = LEASE.format(item.id)
            if not await self._redis.set(lease, self._owner, nx=True, px=LEASE_MS):
                continue  # another gateway has it
            try:
                await self._work_item(raw, item)
            finally:
                assert self._release is not None
                await self._release(keys=[lease], args=[self._owner])

    async def _work_item(self, raw: bytes, item: PendingCompensation) -> None:
        assert self._redis is not None
        if await self._redis.zscore(BACKLOG, raw) is None:
            return  # done by another gateway between our read and our lease
        if await self._delete(_node_of(item), item.file_id):
            await self._redis.zrem(BACKLOG, raw)
            await self._redis.hdel(ATTEMPTS, item.id)
            _log.info("compensation_done", node=item.node_id, file_id=item.file_id)
            return
        attempts = int(await self._redis.hincrby(ATTEMPTS, item.id, 1))
        await self._redis.zadd(
            BACKLOG, {raw: self._clock() + RETRY_BACKOFF.delay(attempts, self._rng)}
        )

    async def _update_gauges(self) -> None:
        pending = self._journal.pending()
        local = sum(isinstance(e, PendingCompensation) for e in pending)
        self._metrics.events_pending.set(len(pending) - local)
        if self._redis is not None:
            with contextlib.suppress(*REDIS_ERRORS):  # unreachable: the last count stands
                self._remote_items = int(await self._redis.zcard(BACKLOG))
        self._metrics.compensation_backlog.set(local + self._remote_items)


def _node_of(item: PendingCompensation) -> NodeRecord:
    return NodeRecord(id=item.node_id, url=item.node_url, mode="rw")
