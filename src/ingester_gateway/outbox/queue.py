"""The outbox: durable work (jobs.py) retried with backoff until it is done, shared by
every gateway on one Redis.

    ingester:outbox:<kind>           sorted set: job JSON, scored by its next attempt time
    ingester:outbox:<kind>:since     sorted set: job id, scored by when it was added
    ingester:outbox:<kind>:attempts  hash: job id -> failed attempts so far (for backoff)
    ingester:outbox-lease:<id>       SET NX PX: the one gateway working job <id> right now

`add` returns once the job is durable: in Redis, or, when Redis cannot be reached (or
is not configured), in the local journal. The loop moves journal jobs to Redis once
it answers (or, without Redis, works them itself) and works the due jobs of every
kind with the handler registered for it. A handler answers True when the job is
done; False (or an exception) tries again later. Jobs of a long-running kind (a
finalize copies a whole file) run in tasks of their own while the loop goes on, their
lease renewed until they end; a stopped process leaves them to the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from ingester_gateway.observability import Metrics, get_logger
from ingester_gateway.outbox.jobs import KINDS, DeleteFile, Job, kind_of, new_job_id
from ingester_gateway.outbox.journal import Journal
from ingester_gateway.registry import NodeRecord
from ingester_gateway.resilience import Backoff
from ingester_gateway.runtime.redis_io import REDIS_ERRORS
from ingester_gateway.runtime.stopping import StopSignal, stop_tasks
from ingester_gateway.tracing import NO_TRACING, Tracing

PREFIX = "ingester:outbox:"
LEASE = "ingester:outbox-lease:{}"
LEASE_MS = 10_000  # renewed every third of it while a long job runs
BATCH = 20
LEGACY_BACKLOG = "ingester:compensations"  # before the outbox took every kind of job
# A failed job waits 0.5-2 s, then up to twice as long each time, at most 5 minutes.
RETRY_BACKOFF = Backoff(base=2.0, cap=300.0, floor=0.5)

# A lease already ours counts as taken: the answer to our SET may have been lost (it ran,
# then the link failed), and waiting out our own lease would only delay the job.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_log = get_logger("ingester_gateway.outbox")
_job = msgspec.json.Decoder(Job)
_encoder = msgspec.json.Encoder()

Handler = Callable[[Any], Awaitable[bool]]


class OutboxUnavailable(Exception):
    """A job could be recorded neither in Redis nor in the journal."""


def due_key(kind: str) -> str:
    return PREFIX + kind


def since_key(kind: str) -> str:
    return PREFIX + kind + ":since"


def attempts_key(kind: str) -> str:
    return PREFIX + kind + ":attempts"


class Outbox:
    def __init__(
        self,
        client: aioredis.Redis | None,
        journal: Journal,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._redis = client
        self._tracing = tracing
        self._journal = journal
        self._metrics = metrics
        self._handlers: dict[str, Handler] = {}
        self._rng = rng or random.Random()
        self._clock = clock
        self._owner = uuid.uuid4().hex  # this process, as a lease holder
        self._take = client.register_script(_TAKE) if client is not None else None
        self._release = client.register_script(_RELEASE) if client is not None else None
        self._renew = client.register_script(_RENEW) if client is not None else None
        self._background: set[str] = set()  # kinds whose jobs run in tasks of their own
        self._running: dict[str, asyncio.Task[None]] = {}  # job id -> its task
        self._nudge = asyncio.Event()
        self._legacy_adopted = False
        self._local_due: dict[str, float] = {}  # journal jobs worked here (no Redis)
        self._local_attempts: dict[str, int] = {}
        self._remote: dict[str, tuple[int, float | None]] = {}  # kind -> (count, oldest)
        self._task: asyncio.Task[None] | None = None
        self._stop = StopSignal()

    def handle(self, job_type: type[Job], handler: Handler, background: bool = False) -> None:
        """Work jobs of `job_type` with `handler`; `background` for long ones."""
        self._handlers[kind_of(job_type)] = handler
        if background:
            self._background.add(kind_of(job_type))

    def nudge(self) -> None:
        """Work the due jobs now, not at the next round."""
        self._nudge.set()

    # -- adding ------------------------------------------------------------------

    async def add(self, job: Job) -> None:
        """Record `job`; durable before this returns. Raises OutboxUnavailable when
        neither Redis nor the journal could take it."""
        if self._redis is not None:
            try:
                await self._schedule(job)
                return
            except REDIS_ERRORS:
                pass
        try:
            await self._journal.append(job)
        except OSError as exc:
            raise OutboxUnavailable(f"Redis unreachable and the journal failed: {exc}") from exc

    async def owe_delete(
        self, node: NodeRecord, file_id: str, reason: str, not_before: float = 0.0
    ) -> None:
        """Record a delete still owed to `node` (a compensation sink)."""
        job = DeleteFile(
            id=new_job_id(),
            node_id=node.id,
            node_url=node.url,
            file_id=file_id,
            reason=reason,
            created_at=self._clock(),
            not_before=not_before,
        )
        try:
            await self.add(job)
        except OutboxUnavailable as exc:  # nowhere durable left: say so, with what to delete
            _log.critical(
                "compensation_lost",
                node=node.id,
                node_url=node.url,
                file_id=file_id,
                reason=reason,
                error=str(exc),
            )

    async def _schedule(self, job: Job) -> None:
        assert self._redis is not None
        kind = kind_of(job)
        due = max(self._clock(), _not_before(job))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(due_key(kind), {_encoder.encode(job): due})
            pipe.zadd(since_key(kind), {job.id: job.created_at})
            await pipe.execute()

    # -- working -----------------------------------------------------------------

    async def start(self, interval: float = 1.0) -> None:
        self._task = asyncio.create_task(self._loop(interval), name="outbox")

    async def stop(self) -> None:
        self._nudge.set()
        if self._task is not None:
            await stop_tasks([self._task], self._stop)
            self._task = None
        running = list(self._running.values())  # their jobs stay for the next process
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _loop(self, interval: float) -> None:
        while not self._stop.is_set:
            try:
                await self.work_once()
            except REDIS_ERRORS:
                pass  # Redis is away: the journal holds what is new; try again later
            except Exception:
                _log.exception("outbox_round_failed")
            await self._update_gauges()  # also while Redis is away: the journal's share
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._nudge.wait()
            self._nudge.clear()

    async def work_once(self) -> None:
        """One round: drain the journal, then work the due jobs in Redis."""
        await self._drain_journal()
        if self._redis is not None:
            if not self._legacy_adopted:
                await self._adopt_legacy_backlog()
                self._legacy_adopted = True
            for kind in KINDS:
                if kind in self._handlers:  # a kind this process cannot work stays as it is
                    await self._work_kind(kind)

    async def _drain_journal(self) -> None:
        now = self._clock()
        for job in self._journal.pending():
            if await self._moved_to_redis(job):
                await self._journal.done(job.id)
                self._local_due.pop(job.id, None)
                self._local_attempts.pop(job.id, None)
            elif job.id in self._running or kind_of(job) not in self._handlers:
                continue  # ours and still running, or a kind this process cannot work
            elif max(self._local_due.get(job.id, 0.0), _not_before(job)) <= now:
                # No Redis (configured or answering): work it from here meanwhile.
                if kind_of(job) in self._background:
                    self._spawn(job.id, self._attempt_local(job, now))
                else:
                    await self._attempt_local(job, now)

    async def _moved_to_redis(self, job: Job) -> bool:
        if self._redis is None:
            return False
        try:
            await self._schedule(job)
        except REDIS_ERRORS:
            return False
        return True

    async def _attempt_local(self, job: Job, now: float) -> None:
        if await self._run(job):
            await self._journal.done(job.id)
            self._local_due.pop(job.id, None)
            self._local_attempts.pop(job.id, None)
            return
        attempts = self._local_attempts.get(job.id, 0) + 1
        self._local_attempts[job.id] = attempts
        self._local_due[job.id] = now + RETRY_BACKOFF.delay(attempts, self._rng)

    async def _work_kind(self, kind: str) -> None:
        assert self._redis is not None
        due = await self._redis.zrangebyscore(
            due_key(kind), "-inf", self._clock(), start=0, num=BATCH
        )
        for raw in due:
            if not isinstance(raw, bytes):
                continue
            try:
                job = _job.decode(raw)
            except msgspec.DecodeError:
                await self._redis.zrem(due_key(kind), raw)  # not ours to understand
                continue
            if job.id in self._running:
                continue  # ours, still running
            lease = LEASE.format(job.id)
            assert self._take is not None
            if not await self._take(keys=[lease], args=[self._owner, LEASE_MS]):
                continue  # another gateway has it
            if kind in self._background:
                self._spawn(job.id, self._work_leased(kind, raw, job, lease))
                continue
            try:
                await self._work_job(kind, raw, job)
            finally:
                assert self._release is not None
                await self._release(keys=[lease], args=[self._owner])

    def _spawn(self, job_id: str, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except REDIS_ERRORS:
                pass  # the job stays; its lease lapses; a later round takes it again
            except Exception:
                _log.exception("outbox_background_job_failed", job_id=job_id)
            finally:
                self._running.pop(job_id, None)

        self._running[job_id] = asyncio.create_task(run(), name=f"outbox-{job_id}")

    async def _work_leased(self, kind: str, raw: bytes, job: Job, lease: str) -> None:
        """A long job under a lease kept alive until it ends."""
        assert self._renew is not None and self._release is not None
        renew, release = self._renew, self._release

        async def keep() -> None:
            while True:
                await asyncio.sleep(LEASE_MS / 3000)
                with contextlib.suppress(*REDIS_ERRORS):
                    await renew(keys=[lease], args=[self._owner, LEASE_MS])

        keeper = asyncio.create_task(keep())
        try:
            await self._work_job(kind, raw, job)
        finally:
            keeper.cancel()
            with contextlib.suppress(*REDIS_ERRORS):
                await release(keys=[lease], args=[self._owner])

    async def _work_job(self, kind: str, raw: bytes, job: Job) -> None:
        assert self._redis is not None
        if await self._redis.zscore(due_key(kind), raw) is None:
            return  # done by another gateway between our read and our lease
        if await self._run(job):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(due_key(kind), raw)
                pipe.zrem(since_key(kind), job.id)
                pipe.hdel(attempts_key(kind), job.id)
                await pipe.execute()
            return
        attempts = int(await self._redis.hincrby(attempts_key(kind), job.id, 1))
        retry_at = self._clock() + RETRY_BACKOFF.delay(attempts, self._rng)
        await self._redis.zadd(due_key(kind), {raw: retry_at})

    async def _run(self, job: Job) -> bool:
        kind = kind_of(job)
        handler = self._handlers.get(kind)
        if handler is None:
            return False  # a kind this process cannot work: leave it for one that can
        with self._tracing.span(f"outbox.{kind}", {"ingester.job_id": job.id}) as span:
            try:
                done = await handler(job)
            except Exception as exc:
                _log.exception("outbox_job_failed", kind=kind, job_id=job.id)
                span.fail(f"{type(exc).__name__}: {exc}")
                return False
            span.set("ingester.done", done)
            return done

    async def _adopt_legacy_backlog(self) -> None:
        """Compensations owed under the backlog's old key move into the outbox."""
        assert self._redis is not None
        for raw in await self._redis.zrange(LEGACY_BACKLOG, 0, -1):
            if not isinstance(raw, bytes | str):
                continue
            with contextlib.suppress(msgspec.DecodeError):
                await self._schedule(_job.decode(raw))
            await self._redis.zrem(LEGACY_BACKLOG, raw)
        await self._redis.delete(LEGACY_BACKLOG + ":attempts")

    # -- gauges ------------------------------------------------------------------

    async def _update_gauges(self) -> None:
        now = self._clock()
        local: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for job in self._journal.pending():
            local[kind_of(job)].append(job.created_at)
        if self._redis is not None:
            with contextlib.suppress(*REDIS_ERRORS):  # unreachable: the last counts stand
                async with self._redis.pipeline(transaction=False) as pipe:
                    for kind in KINDS:
                        pipe.zcard(since_key(kind))
                        pipe.zrange(since_key(kind), 0, 0, withscores=True)
                    answers = await pipe.execute()
                for i, kind in enumerate(KINDS):
                    count, first = answers[2 * i], answers[2 * i + 1]
                    self._remote[kind] = (int(count), float(first[0][1]) if first else None)
        for kind in KINDS:
            remote_count, remote_oldest = self._remote.get(kind, (0, None))
            created = [*local[kind], *([remote_oldest] if remote_oldest is not None else [])]
            self._metrics.outbox_jobs.labels(kind).set(len(local[kind]) + remote_count)
            self._metrics.outbox_oldest.labels(kind).set(now - min(created) if created else 0)


def _not_before(job: Job) -> float:
    return job.not_before if isinstance(job, DeleteFile) else 0.0
