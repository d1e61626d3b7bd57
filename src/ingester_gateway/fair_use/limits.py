"""The pure part of fair use: which limits apply to a user, and the window arithmetic.

Both the request rate and the byte quota are "N per window" budgets kept as one number
per user, the time at which the user's spending will have drained (GCRA, the generic
cell rate algorithm of ATM networks; what redis-cell and Stripe's limiters use). Each
request (or byte) costs `window / N` seconds; the budget is spent while the drain time
lies more than a window ahead. So a user may burst N at once and then goes on at N per
window, with no fixed-window edge where 2N pass in a moment, and one number per user
is all that is stored. The Lua script in `redis_ledger.py` does the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ingester_gateway.auth.verify import Principal
from ingester_gateway.config import ANY_ROLE

Limit = Literal["concurrent_uploads", "requests", "bytes"]
RATE_WINDOW = 60.0  # requests are limited per minute (artStore's `rate_limit` unit)


def role_limit(table: Mapping[str, int], role: str) -> int:
    """The role's value, else the `*` value, else 0 (no limit)."""
    found = table.get(role)
    return table.get(ANY_ROLE, 0) if found is None else found


@dataclass(frozen=True, slots=True)
class UserLimits:
    """What one user may do; 0 is no limit."""

    concurrent_uploads: int = 0
    requests_per_minute: int = 0
    bytes_per_window: int = 0
    window: float = 60.0

    @property
    def request_cost(self) -> float:
        """Seconds of the request budget one request spends (0: unlimited)."""
        return RATE_WINDOW / self.requests_per_minute if self.requests_per_minute else 0.0

    @property
    def byte_cost(self) -> float:
        """Seconds of the byte budget one byte spends (0: unlimited)."""
        return self.window / self.bytes_per_window if self.bytes_per_window else 0.0

    @property
    def unlimited(self) -> bool:
        return not (self.concurrent_uploads or self.requests_per_minute or self.bytes_per_window)


@dataclass(frozen=True, slots=True)
class FairUsePolicy:
    """The configured limits per role (`INGESTER_FAIR_USE_*`), resolved per principal."""

    concurrent_uploads: Mapping[str, int]
    requests_per_minute: Mapping[str, int]
    bytes_per_window: Mapping[str, int]
    window: float = 60.0
    token_rate_limit: bool = True  # the token's `rate_limit` claim replaces the role's
    # (role, claim) -> limits: a handful of roles and claim values, asked on every upload
    _resolved: dict[tuple[str, int | None], UserLimits] = field(
        default_factory=dict, compare=False, repr=False
    )

    def limits_for(self, principal: Principal) -> UserLimits:
        key = (principal.role, principal.rate_limit if self.token_rate_limit else None)
        found = self._resolved.get(key)
        if found is None:
            if len(self._resolved) >= 1024:  # claims are signed, but never unbounded
                self._resolved.clear()
            found = self._resolved[key] = self._resolve(*key)
        return found

    def _resolve(self, role: str, claim: int | None) -> UserLimits:
        return UserLimits(
            concurrent_uploads=role_limit(self.concurrent_uploads, role),
            requests_per_minute=claim or role_limit(self.requests_per_minute, role),
            bytes_per_window=role_limit(self.bytes_per_window, role),
            window=self.window,
        )


# -- the drain-time arithmetic (GCRA) ----------------------------------------------------


def spend(drained_at: float, now: float, cost: float, window: float) -> float | None:
    """The new drain time after spending `cost` seconds of budget, or None when the
    budget is spent (the drain time would lie more than `window` ahead)."""
    after = max(drained_at, now) + cost
    return None if after - now > window else after


def refused_for(drained_at: float, now: float, cost: float, window: float) -> float:
    """How long until `spend` would succeed."""
    return max(0.0, max(drained_at, now) + cost - now - window)


def add(drained_at: float, now: float, cost: float) -> float:
    """Spend unconditionally: bytes that have arrived count, whatever the budget says."""
    return max(drained_at, now) + cost


def backlog(drained_at: float, now: float) -> float:
    """Seconds of spending not yet drained."""
    return max(0.0, drained_at - now)


def over_quota(backlog_seconds: float, window: float) -> float:
    """How long a user with this backlog must wait to be back within its quota (0: it is)."""
    return max(0.0, backlog_seconds - window)


def retry_after(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
