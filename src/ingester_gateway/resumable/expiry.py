"""Expiry: uploads nobody has touched for `INGESTER_TUS_EXPIRY_SECONDS` are removed, with
their staged bytes (and staging files no state knows of, left by a crash). An upload
being stored, or a partial taken by a final upload, is left to its owner; one in use
right now (its lock is held) is not idle."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from ingester_gateway.observability import get_logger
from ingester_gateway.resumable.ports import (
    Locker,
    LockTimeout,
    Staging,
    StateStore,
    StateUnavailable,
    no_release,
)
from ingester_gateway.resumable.state import UploadState
from ingester_gateway.runtime.stopping import StopSignal, stop_tasks

_log = get_logger("ingester_gateway.resumable")
SWEEP_BATCH = 100


async def discard(store: StateStore, staging: Staging, state: UploadState) -> None:
    """The upload, its staged bytes, and a final upload's parts: gone."""
    for part_id in state.parts:
        await staging.remove(part_id)
        await store.delete(part_id)
    await staging.remove(state.id)
    await store.delete(state.id)


class Sweeper:
    def __init__(
        self,
        store: StateStore,
        staging: Staging,
        locker: Locker,
        tokens: dict[str, str],
        expiry: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._staging = staging
        self._locker = locker
        self._tokens = tokens
        self._expiry = expiry
        self._clock = clock
        self._stop = StopSignal()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tus-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], self._stop)
            self._task = None

    def interval(self) -> float:
        return max(0.25, min(60.0, self._expiry / 4))

    async def _loop(self) -> None:
        while not self._stop.is_set:
            await self._stop.sleep(self.interval())
            if self._stop.is_set:
                return
            try:
                await self.sweep()
            except StateUnavailable:
                pass  # Redis away: the next round
            except Exception:
                _log.exception("tus_sweep_failed")

    async def sweep(self) -> int:
        """Remove expired uploads (and staging files no state knows of); how many."""
        now = self._clock()
        removed = 0
        for upload_id in await self._store.expiring(now, SWEEP_BATCH):
            state = await self._store.get(upload_id)
            if state is None:
                await self._store.delete(upload_id)  # a stale index entry
                continue
            if not state.expired(now) or state.final_of is not None:
                await self._store.postpone(upload_id, now + self._expiry)  # its owner decides
                continue
            try:
                lock = await self._locker.acquire(upload_id, no_release, 0)
            except LockTimeout:
                continue  # in use right now: not idle
            try:
                await discard(self._store, self._staging, state)
                self._tokens.pop(upload_id, None)
            finally:
                await lock.release()
            removed += 1
            _log.info("resumable_expired", upload_id=upload_id, phase=state.phase)
        for upload_id in await self._staging.orphans(now - 2 * self._expiry):
            with contextlib.suppress(StateUnavailable):
                if await self._store.get(upload_id) is None:
                    await self._staging.remove(upload_id)
                    removed += 1
        return removed
