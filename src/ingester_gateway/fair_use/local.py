"""Budgets and slots in this process: the ledger without Redis, and the one an instance
falls back on while Redis does not answer. A process that dies takes its slots with it,
so nothing here needs a lease."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ingester_gateway.fair_use import limits as gcra
from ingester_gateway.fair_use.limits import UserLimits
from ingester_gateway.fair_use.ports import Admission

SWEEP_EVERY = 1024  # admissions between sweeps of users with nothing left to remember


@dataclass(slots=True)
class _User:
    requests_drained_at: float = 0.0
    bytes_drained_at: float = 0.0
    slots: set[str] = field(default_factory=set)

    def idle(self, now: float) -> bool:
        return not self.slots and max(self.requests_drained_at, self.bytes_drained_at) <= now


class LocalLedger:
    needs_renewal = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._users: dict[str, _User] = {}
        self._admitted = 0

    async def admit(self, user: str, slot: str, limits: UserLimits) -> Admission:
        now = self._clock()
        self._admitted += 1
        if self._admitted % SWEEP_EVERY == 0:
            self._sweep(now)
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = _User()
        if limits.requests_per_minute:
            spent = gcra.spend(
                state.requests_drained_at, now, limits.request_cost, gcra.RATE_WINDOW
            )
            if spent is None:
                wait = gcra.refused_for(
                    state.requests_drained_at, now, limits.request_cost, gcra.RATE_WINDOW
                )
                return Admission("requests", wait, 0.0)
            state.requests_drained_at = spent
        backlog = gcra.backlog(state.bytes_drained_at, now)
        if limits.bytes_per_window and (wait := gcra.over_quota(backlog, limits.window)):
            return Admission("bytes", wait, backlog)
        if limits.concurrent_uploads:
            if len(state.slots) >= limits.concurrent_uploads:
                return Admission("concurrent_uploads", 0.0, backlog)
            state.slots.add(slot)
        return Admission(None, 0.0, backlog)

    async def count(self, user: str, nbytes: int, limits: UserLimits, release: str | None) -> float:
        now = self._clock()
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = _User()
        if release is not None:
            state.slots.discard(release)
        if nbytes and limits.bytes_per_window:
            state.bytes_drained_at = gcra.add(
                state.bytes_drained_at, now, nbytes * limits.byte_cost
            )
        backlog = gcra.backlog(state.bytes_drained_at, now)
        if state.idle(now):
            del self._users[user]
        return backlog

    async def renew(self, slots: Sequence[tuple[str, str]]) -> None:
        return None  # slots here live exactly as long as the process

    def users(self) -> int:
        """Users with something remembered (tests: nothing is kept forever)."""
        return len(self._users)

    def _sweep(self, now: float) -> None:
        for user in [u for u, state in self._users.items() if state.idle(now)]:
            del self._users[user]
