"""Static registry: the Storage Elements named in `INGESTER_STORAGE_ELEMENTS`,
kept honest by polling each one's `/api/v1/capacity`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import msgspec

from ingester_gateway.config import StorageElementConfig
from ingester_gateway.registry import NodeRecord
from ingester_gateway.upstream import CapacityReply

Probe = Callable[[NodeRecord], Awaitable[CapacityReply | None]]


def apply_probe(node: NodeRecord, reply: CapacityReply | None, now: float) -> NodeRecord:
    """The node as its latest health answer shows it (pure)."""
    if reply is None:
        return _replace(node, status="down")
    status = "ok" if reply.health in (None, "healthy", "ok") else "degraded"
    capacity = reply.capacity
    return _replace(
        node,
        status=status,
        mode=reply.mode or node.mode,
        capacity_total=capacity.total if capacity else node.capacity_total,
        capacity_used=capacity.used if capacity else node.capacity_used,
        capacity_available=capacity.available if capacity else node.capacity_available,
        last_seen=now,
    )


def _replace(node: NodeRecord, **changes: object) -> NodeRecord:
    return msgspec.structs.replace(node, **changes)


class StaticRegistry:
    def __init__(
        self, configured: list[StorageElementConfig], probe: Probe, interval: float = 5.0
    ) -> None:
        self._nodes = {
            c.id: NodeRecord(id=c.id, url=c.url, mode=c.mode, priority=c.priority)
            for c in configured
        }
        self._probe = probe
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="static-registry-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def nodes(self) -> list[NodeRecord]:
        return list(self._nodes.values())

    def is_stale(self) -> bool:
        return False  # the configuration is the source; it cannot go away

    async def refresh(self) -> None:
        nodes = list(self._nodes.values())
        replies = await asyncio.gather(*(self._probe(n) for n in nodes))
        now = time.time()
        for node, reply in zip(nodes, replies, strict=True):
            self._nodes[node.id] = apply_probe(node, reply, now)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.refresh()
