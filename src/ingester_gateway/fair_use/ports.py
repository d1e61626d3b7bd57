"""The small interfaces of fair use: what an endpoint holds while it uploads
(`UploadSlot`, from `gate.FairUseGate.acquire_upload`), and where the users' budgets
are kept (`Ledger`: this process, or Redis for every instance)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ingester_gateway.fair_use.limits import Limit, UserLimits
from ingester_gateway.pipeline.body import BodyMeter


class UploadSlot(Protocol):
    """One admitted upload. `meter` (None when the user has no byte quota) counts the
    body while it streams and paces reading; `release()` gives the slot back and counts
    what the meter has not told yet. Idempotent; call it before answering, so that a
    client that sends its next upload at once finds its slot free."""

    @property
    def meter(self) -> BodyMeter | None: ...

    async def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Admission:
    refused: Limit | None  # None: admitted
    retry_after: float  # seconds, when refused
    backlog: float  # the user's byte backlog (seconds of its quota), as the ledger saw it


class Ledger(Protocol):
    """Where budgets and slots are kept. `slot` names one upload, unique across
    instances; a ledger that keeps slots for others (Redis) wants them renewed."""

    needs_renewal: bool

    async def admit(self, user: str, slot: str, limits: UserLimits) -> Admission:
        """Spend one request, check the byte backlog, take a slot: all or (for the
        first limit that refuses) nothing but the request."""
        ...

    async def count(self, user: str, nbytes: int, limits: UserLimits, release: str | None) -> float:
        """Add `nbytes` to the user's byte budget (and give back slot `release`); the
        backlog in seconds afterwards."""
        ...

    async def renew(self, slots: Sequence[tuple[str, str]]) -> None:
        """Extend the lease of these (user, slot) pairs still held."""
        ...
