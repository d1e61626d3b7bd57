"""Circuit breaker, retry policy and backoff. Pure: the clock and the randomness are
passed in."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: retry N waits between `floor` and
    `min(cap, base * 2**(N-1))` seconds. The one backoff of the code base."""

    base: float
    cap: float
    floor: float = 0.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before retry number `attempt` (1 = the first retry)."""
        ceiling = min(self.cap, self.base * 2 ** (max(1, attempt) - 1))
        return rng.uniform(min(self.floor, ceiling), ceiling)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open the circuit
    failure_rate: float = 0.5  # or this share of failures over the window...
    min_calls: int = 10  # ...once the window holds at least this many calls
    window_seconds: float = 30.0
    cooldown_seconds: float = 10.0  # open -> half-open after this long


class CircuitBreaker:
    """closed -> open after `failure_threshold` consecutive failures or a failure rate
    over the window; open -> half-open after the cool-down, where exactly one probe
    goes through: its success closes the circuit, its failure opens it again."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._calls: deque[tuple[float, bool]] = deque()
        self._opened_at = 0.0
        self._probe_out = False

    def is_open(self, now: float) -> bool:
        """Would a request be refused right now? (No state change: for selection.)"""
        if self.state is BreakerState.OPEN:
            return now - self._opened_at < self.policy.cooldown_seconds
        if self.state is BreakerState.HALF_OPEN:
            return self._probe_out
        return False

    def acquire(self, now: float) -> bool:
        """Claim the right to send one request; in half-open, only the first caller
        (the probe) gets it."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now - self._opened_at < self.policy.cooldown_seconds:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probe_out = False
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def release(self) -> None:
        """The acquired request said nothing about the node (it failed on our side, or
        for a reason of its own): neither a success nor a failure."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_out = False

    def record_success(self, now: float) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._close()
            return
        self._consecutive = 0
        self._remember(now, ok=True)

    def record_failure(self, now: float) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        if self.state is BreakerState.OPEN:
            return
        self._consecutive += 1
        self._remember(now, ok=False)
        failures = sum(1 for _, ok in self._calls if not ok)
        over_rate = (
            len(self._calls) >= self.policy.min_calls
            and failures / len(self._calls) >= self.policy.failure_rate
        )
        if self._consecutive >= self.policy.failure_threshold or over_rate:
            self._open(now)

    def _remember(self, now: float, ok: bool) -> None:
        self._calls.append((now, ok))
        horizon = now - self.policy.window_seconds
        while self._calls and self._calls[0][0] < horizon:
            self._calls.popleft()

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self._probe_out = False

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._calls.clear()
        self._probe_out = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between tries, bounded by a number of attempts and one total deadline."""

    max_attempts: int = 4
    deadline_seconds: float = 15.0
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.05, cap=2.0))

    def next_delay(self, attempt: int, elapsed: float, rng: random.Random) -> float | None:
        """The wait before retry `attempt`, or None when the budget is spent."""
        if attempt >= self.max_attempts:
            return None
        delay = self.backoff.delay(attempt, rng)
        if elapsed + delay >= self.deadline_seconds:
            return None
        return delay
