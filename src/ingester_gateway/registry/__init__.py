"""Where Storage Elements are known from: one Protocol, one source per module."""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from ingester_gateway.models import WRITABLE_MODES

NodeStatus = Literal["ok", "degraded", "down", "unknown"]


class NodeRecord(msgspec.Struct, frozen=True):
    """One Storage Element as the gateway sees it."""

    id: str
    url: str
    mode: str
    status: NodeStatus = "unknown"
    priority: int = 100
    capacity_total: int | None = None
    capacity_used: int | None = None
    capacity_available: int | None = None
    last_seen: float | None = None  # unix time of the last heartbeat or health answer
    expires_at: float | None = None  # unix time the record lapses without a new heartbeat
    draining: bool = False  # takes no new uploads; in-flight ones finish

    @property
    def writable(self) -> bool:
        return self.mode in WRITABLE_MODES


class NodeRegistry(Protocol):
    """A live view of the Storage Elements; reads are in-memory and never block."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def nodes(self) -> list[NodeRecord]: ...

    def is_stale(self) -> bool:
        """True when the view could not be refreshed recently (its source is down)."""
        ...
