"""One request at a time per upload (the `Locker` Protocol): in this process, or across
every gateway on one Redis.

A request that wants an upload someone else holds asks the holder to let go (the
anchors' behaviour: the holder stops reading, saves what arrived, answers) and takes
the lock once it is free. Over Redis the lock is `SET NX PX` with a token, renewed while
held; the request to let go is published on one channel that every gateway listens to.

A gateway that dies holding a lock (SIGKILL, a crash) cannot let go, and its lock would
block the client's resume until it runs out. So each gateway also subscribes to a
channel of its own while it runs, and names it in its tokens: Redis drops that
subscription with the dead process's connections, and a request finding no subscriber
behind a lock frees it at once (compare-and-delete on the token it read). A live
gateway that merely lost its subscription for a moment may be robbed of a lock that
way; its next save then finds the offset moved (compare-and-set) and it stops, as when
a lock runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ingester_gateway.observability import get_logger
from ingester_gateway.resilience import Backoff
from ingester_gateway.resumable.ports import LockTimeout, StateUnavailable
from ingester_gateway.runtime.redis_io import REDIS_ERRORS
from ingester_gateway.runtime.stopping import StopSignal, stop_tasks

_log = get_logger("ingester_gateway.resumable")


class _Holder:
    """What every lock kind shares: the holder's callback, called at most once."""

    def __init__(self, on_release: Callable[[], None]) -> None:
        self._on_release = on_release
        self.asked = False
        self.lost = False
        self.freed = asyncio.Event()

    def ask(self) -> None:
        if not self.asked:
            self.asked = True
            self._on_release()


class LocalLock(_Holder):
    def __init__(self, locker: LocalLocker, upload_id: str, on_release: Callable[[], None]):
        super().__init__(on_release)
        self._locker = locker
        self._id = upload_id

    async def release(self) -> None:
        if self._locker.held.get(self._id) is self:
            del self._locker.held[self._id]
        self.freed.set()


class LocalLocker:
    """Locks of one process (a gateway without Redis)."""

    def __init__(self) -> None:
        self.held: dict[str, LocalLock] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def acquire(
        self, upload_id: str, on_release: Callable[[], None], max_wait: float
    ) -> LocalLock:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while (holder := self.held.get(upload_id)) is not None:
            if max_wait <= 0:
                raise LockTimeout()
            holder.ask()
            try:
                async with asyncio.timeout_at(deadline):
                    await holder.freed.wait()
            except TimeoutError:
                raise LockTimeout() from None
        lock = LocalLock(self, upload_id, on_release)
        self.held[upload_id] = lock
        return lock


LOCK = "ingester:tus-lock:{}"
CHANNEL = "ingester:tus:release"  # message: the id of an upload someone wants
HOLDER = "ingester:tus:holder:{}"  # a gateway's own channel, subscribed while it runs
LOCK_MS = 10_000  # renewed every third of it while held
ASK_EVERY = 1.0  # a request to let go is repeated (the holder may have missed one)
POLL_SECONDS = 0.02

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_BACKOFF = Backoff(base=0.2, cap=5.0, floor=0.05)


class RedisLock(_Holder):
    def __init__(
        self, locker: RedisLocker, upload_id: str, token: str, on_release: Callable[[], None]
    ) -> None:
        super().__init__(on_release)
        self._locker = locker
        self._id = upload_id
        self._token = token
        self._keeper = asyncio.create_task(self._keep(), name=f"tus-lock-{upload_id}")

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(LOCK_MS / 3000)
            try:
                key = LOCK.format(self._id)
                kept = await self._locker.renew(keys=[key], args=[self._token, LOCK_MS])
            except REDIS_ERRORS:
                continue  # the lock lasts LOCK_MS; the next try may reach Redis
            if not kept:
                self.lost = True
                _log.warning("upload_lock_lost", upload_id=self._id)
                self.ask()
                return

    async def release(self) -> None:
        self._keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keeper
        if self._locker.held.get(self._id) is self:
            del self._locker.held[self._id]
        self.freed.set()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._locker.unlock(keys=[LOCK.format(self._id)], args=[self._token])


class RedisLocker:
    """Locks shared by every gateway on one Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self.renew = client.register_script(_RENEW)
        self.unlock = client.register_script(_RELEASE)
        self.held: dict[str, RedisLock] = {}
        self._stop = StopSignal()
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self.instance = uuid.uuid4().hex  # named in this gateway's tokens

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="tus-release-listener")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], self._stop)
            self._task = None

    async def acquire(
        self, upload_id: str, on_release: Callable[[], None], max_wait: float
    ) -> RedisLock:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        token = f"{self.instance}:{uuid.uuid4().hex}"
        asked_at: float | None = None
        key = LOCK.format(upload_id)
        try:
            while not await self._redis.set(key, token, nx=True, px=LOCK_MS):
                now = loop.time()
                due = asked_at is None or now - asked_at >= ASK_EVERY
                if due and await self._free_if_holder_gone(upload_id):
                    continue
                if max_wait <= 0 or now >= deadline:
                    raise LockTimeout()
                if due:
                    asked_at = now
                    local = self.held.get(upload_id)
                    if local is not None:
                        local.ask()  # held here: no round trip needed
                    await self._redis.publish(CHANNEL, upload_id)
                await asyncio.sleep(min(POLL_SECONDS, deadline - now))
        except REDIS_ERRORS as exc:
            raise StateUnavailable(str(exc)) from None
        lock = RedisLock(self, upload_id, token, on_release)
        self.held[upload_id] = lock
        return lock

    async def _free_if_holder_gone(self, upload_id: str) -> bool:
        """Free the upload's lock when the gateway holding it is gone (no subscriber on
        its channel); True when the lock is free now, or was freed meanwhile."""
        key = LOCK.format(upload_id)
        held = await self._redis.get(key)
        if held is None:
            return True
        token = held.decode() if isinstance(held, bytes) else str(held)
        holder, separator, _ = token.partition(":")
        if not separator or holder == self.instance:
            return False  # an older gateway's token, or ours: let go when asked
        try:
            [(_, subscribers)] = await self._redis.pubsub_numsub(HOLDER.format(holder))
        except ResponseError:
            return False  # PUBSUB not allowed here: the lock runs out instead
        if subscribers:
            return False
        if await self.unlock(keys=[key], args=[token]):
            _log.warning("upload_lock_freed", upload_id=upload_id, holder=holder)
        return True

    async def _listen(self) -> None:
        failures = 0
        while not self._stop.is_set:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL, HOLDER.format(self.instance))
                failures = 0
                while not self._stop.is_set:
                    # Short waits: stop() is noticed within one (runtime/stopping.py).
                    message = await pubsub.get_message(timeout=0.2)
                    if message is None:
                        continue
                    data = message.get("data")
                    upload_id = data.decode() if isinstance(data, bytes) else str(data)
                    holder = self.held.get(upload_id)
                    if holder is not None:
                        _log.info("upload_release_requested", upload_id=upload_id)
                        holder.ask()
            except REDIS_ERRORS:
                failures += 1
                await self._stop.sleep(_BACKOFF.delay(failures, self._rng))
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
