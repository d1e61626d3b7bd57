"""The gateway's own view of each node's health: every node any registry lists is
asked for `/api/v1/capacity` on an interval, and the answers are laid over the
registry's records (a node that does not answer is down, whatever its registry says)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import msgspec

from ingester_gateway.registry import NodeRecord, NodeStatus
from ingester_gateway.upstream.wire import CapacityReply

Probe = Callable[[NodeRecord], Awaitable[CapacityReply | None]]


_SEVERITY = {"ok": 0, "unknown": 0, "degraded": 1, "down": 2}


def apply_probe(node: NodeRecord, reply: CapacityReply | None, now: float) -> NodeRecord:
    """The node as its latest health answer shows it (pure). An answer never overrules
    a registry that calls the node down or not writable (an Admin Module taking it out
    of service): the probe can only make a node look worse."""
    if reply is None:
        return msgspec.structs.replace(node, status="down")
    probed: NodeStatus = "ok" if reply.health in (None, "healthy", "ok") else "degraded"
    status = node.status if _SEVERITY[node.status] > _SEVERITY[probed] else probed
    capacity = reply.capacity
    return msgspec.structs.replace(
        node,
        status=status,
        # A writable node's own word on its mode: it refuses what its mode forbids.
        mode=(reply.mode or node.mode) if node.writable else node.mode,
        capacity_total=capacity.total if capacity else node.capacity_total,
        capacity_used=capacity.used if capacity else node.capacity_used,
        capacity_available=capacity.available if capacity else node.capacity_available,
        last_seen=max(now, node.last_seen or 0.0),
    )


class HealthProber:
    def __init__(
        self,
        probe: Probe,
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._clock = clock
        self._answers: dict[str, tuple[CapacityReply | None, float]] = {}
        # node id -> (registry record, answer, overlaid record): every upload asks for
        # the view, and records and answers change only every few seconds.
        self._overlaid: dict[
            str, tuple[NodeRecord, tuple[CapacityReply | None, float], NodeRecord]
        ] = {}
        self._task: asyncio.Task[None] | None = None

    def overlay(self, nodes: list[NodeRecord]) -> list[NodeRecord]:
        """`nodes` with the latest probe answers applied; unprobed nodes as they are."""
        out = []
        for node in nodes:
            answer = self._answers.get(node.id)
            if answer is None:
                out.append(node)
                continue
            cached = self._overlaid.get(node.id)
            if cached is not None and cached[0] is node and cached[1] is answer:
                out.append(cached[2])
                continue
            overlaid = apply_probe(node, *answer)
            self._overlaid[node.id] = (node, answer, overlaid)
            out.append(overlaid)
        return out

    async def check(self, node: NodeRecord) -> bool:
        """Probe one node now; True when it answers healthy."""
        reply = await self._probe(node)
        self._answers[node.id] = (reply, self._clock())
        return apply_probe(node, reply, self._clock()).status == "ok"

    async def probe(self, nodes: list[NodeRecord]) -> None:
        replies = await asyncio.gather(*(self._probe(n) for n in nodes))
        now = self._clock()
        self._answers = {n.id: (reply, now) for n, reply in zip(nodes, replies, strict=True)}

    async def start(self, nodes: Callable[[], list[NodeRecord]]) -> None:
        await self.probe(nodes())
        self._task = asyncio.create_task(self._loop(nodes), name="health-prober")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self, nodes: Callable[[], list[NodeRecord]]) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe(nodes())
