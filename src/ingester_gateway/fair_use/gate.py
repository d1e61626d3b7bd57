"""The fair-use gate: admits an upload or refuses it with 429, paces its body while the
user is over its byte quota, and gives its slot back at the end.

Per upload: one ledger call at the start (`admit`) and one at the end (`count` with the
slot to give back), none at all for a user without limits; in between, the body's bytes
are counted locally and told to the ledger every FLUSH_BYTES, or when the local
estimate says the user is over its quota (then reading waits until the quota allows
more). A slot held in Redis is renewed every third of a lease while its upload runs.

When Redis does not answer, the instance decides alone (its local ledger) for
REDIS_RETRY_SECONDS, then asks Redis again: an outage never refuses uploads, and
limits hold per instance meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable

from structlog.typing import FilteringBoundLogger

from ingester_gateway import errors
from ingester_gateway.auth.verify import Principal
from ingester_gateway.errors import ApiError
from ingester_gateway.fair_use import limits as gcra
from ingester_gateway.fair_use.limits import FairUsePolicy, Limit, UserLimits
from ingester_gateway.fair_use.ports import Admission, Ledger, UploadSlot
from ingester_gateway.observability import Metrics
from ingester_gateway.pipeline.body import BodyMeter
from ingester_gateway.runtime.redis_io import REDIS_ERRORS

FLUSH_BYTES = 4 * 2**20  # body bytes counted locally before the ledger is told
REDIS_RETRY_SECONDS = 5.0
# An upload in flight ends when it ends: a client at its limit is asked to look again soon.
CONCURRENT_RETRY_AFTER = 1.0

_PROBLEMS = {
    "concurrent_uploads": errors.TOO_MANY_UPLOADS,
    "requests": errors.RATE_LIMITED,
    "bytes": errors.BYTE_QUOTA_EXCEEDED,
}


class _Unlimited:
    """The slot of a user without limits: nothing to count, nothing to give back."""

    meter: BodyMeter | None = None

    async def release(self) -> None:
        return None


UNLIMITED: UploadSlot = _Unlimited()


class FairUseGate:
    def __init__(
        self,
        policy: FairUsePolicy,
        ledger: Ledger,
        metrics: Metrics,
        log: FilteringBoundLogger,
        *,
        lease: float = 30.0,
        fallback: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.policy = policy
        self._ledger = ledger
        self._fallback = fallback
        self.metrics = metrics
        self._log = log
        self._lease = lease
        self.clock = clock
        self.sleep = sleep
        self._names = itertools.count()
        self._instance = secrets.token_hex(6)  # slot names are unique across instances
        self._held: dict[_Slot, float] = {}  # slots a ledger wants renewed -> last renewal
        self._redis_back_at = 0.0
        self._renewer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._ledger.needs_renewal:
            self._renewer = asyncio.create_task(self._renew_leases(), name="fair-use-leases")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def acquire_upload(self, principal: Principal) -> UploadSlot:
        limits = self.policy.limits_for(principal)
        if limits.unlimited:
            return UNLIMITED
        name = f"{self._instance}:{next(self._names)}"
        ledger = self._ledger
        if self._fallback is not None and self.clock() < self._redis_back_at:
            ledger = self._fallback
        try:
            admission = await ledger.admit(principal.sub, name, limits)
        except REDIS_ERRORS as exc:
            assert self._fallback is not None  # only the Redis ledger fails like this
            self.redis_failed(exc)
            ledger = self._fallback
            admission = await ledger.admit(principal.sub, name, limits)
        if admission.refused is not None:
            raise self._refusal(admission.refused, admission, limits)
        slot = _Slot(self, ledger, principal.sub, name, limits, admission.backlog)
        if ledger.needs_renewal and limits.concurrent_uploads:
            self._held[slot] = self.clock()
        return slot

    def redis_failed(self, exc: BaseException) -> None:
        """Redis did not answer: decide alone for a while."""
        self.metrics.fair_use_redis_errors.inc()
        now = self.clock()
        if self._fallback is not None and now >= self._redis_back_at:
            self._log.warning(
                "fair_use_redis_unavailable",
                error=repr(exc),
                fallback=f"limits per instance for {REDIS_RETRY_SECONDS:g} s",
            )
            self._redis_back_at = now + REDIS_RETRY_SECONDS

    def forget(self, slot: _Slot) -> None:
        self._held.pop(slot, None)

    def _refusal(self, limit: Limit, admission: Admission, limits: UserLimits) -> ApiError:
        self.metrics.child(self.metrics.fair_use_refusals, limit).inc()
        if limit == "concurrent_uploads":
            wait = CONCURRENT_RETRY_AFTER
            message = (
                f"{limits.concurrent_uploads} uploads of yours are in flight, as many as"
                " allowed; retry when one has finished"
            )
        elif limit == "requests":
            wait = admission.retry_after
            message = f"more than {limits.requests_per_minute} requests per minute"
        else:
            wait = admission.retry_after
            message = (
                f"over the quota of {limits.bytes_per_window} bytes per"
                f" {limits.window:g} s; the next upload may start once it allows"
            )
        seconds = gcra.retry_after(wait)
        return _PROBLEMS[limit](message, [(b"retry-after", str(seconds).encode())])

    async def _renew_leases(self) -> None:
        """Every third of a lease: extend the leases of the uploads still running that
        were admitted (or renewed) half a period ago or more, so that no lease goes
        two periods without renewal (it lasts three)."""
        period = self._lease / 3
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            due = [slot for slot, renewed in self._held.items() if now - renewed >= period / 2]
            if not due:
                continue
            try:
                await self._ledger.renew([(slot.user, slot.name) for slot in due])
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
                continue
            for slot in due:
                if slot in self._held:
                    self._held[slot] = now


class _Slot:
    """One admitted upload; its own meter when the user has a byte quota."""

    def __init__(
        self,
        gate: FairUseGate,
        ledger: Ledger,
        user: str,
        name: str,
        limits: UserLimits,
        backlog: float,
    ) -> None:
        self._gate = gate
        self._ledger = ledger
        self.user = user
        self.name = name
        self._limits = limits
        self._holds = bool(limits.concurrent_uploads)  # a slot to give back in the ledger
        self._cost = limits.byte_cost
        self._pending = 0  # bytes counted here, not yet told to the ledger
        self._backlog = backlog  # seconds, as the ledger last said ...
        self._told_at = gate.clock()  # ... at this time
        self._released = False
        self.meter: BodyMeter | None = self if limits.bytes_per_window else None

    def count(self, nbytes: int) -> bool:
        self._pending += nbytes
        return (
            self._pending >= FLUSH_BYTES or self._estimate(self._gate.clock()) > self._limits.window
        )

    def _estimate(self, now: float) -> float:
        """The user's byte backlog now: the ledger's word, drained since, plus ours."""
        told = max(0.0, self._backlog - (now - self._told_at))
        return told + self._pending * self._cost

    async def settle(self) -> None:
        gate = self._gate
        if self._pending:
            estimate = self._estimate(gate.clock())
            nbytes, self._pending = self._pending, 0
            try:
                self._backlog = await self._ledger.count(self.user, nbytes, self._limits, None)
            except REDIS_ERRORS as exc:
                gate.redis_failed(exc)
                self._backlog = estimate  # go on by our own count
            self._told_at = gate.clock()
        wait = gcra.over_quota(self._estimate(gate.clock()), self._limits.window)
        if wait > 0:
            gate.metrics.fair_use_paced.inc(wait)
            await gate.sleep(wait)

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._gate.forget(self)
        if not (self._holds or self._pending):
            return
        nbytes, self._pending = self._pending, 0
        try:
            await self._ledger.count(
                self.user, nbytes, self._limits, self.name if self._holds else None
            )
        except REDIS_ERRORS as exc:
            self._gate.redis_failed(exc)  # the slot's lease ends it; the bytes go uncounted
