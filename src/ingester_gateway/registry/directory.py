"""Everything the gateway knows about its nodes, in one place: the registry's records,
its own health probes over them, a circuit breaker per node, and the bytes reserved on
each by uploads in flight. Upload code asks it for a node and reports how it went."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Collection

from ingester_gateway.models import RetentionPolicy
from ingester_gateway.registry import NodeRecord, NodeRegistry
from ingester_gateway.registry.health import HealthProber
from ingester_gateway.registry.selection import eligible_nodes, select_node
from ingester_gateway.resilience import BreakerPolicy, BreakerState, CircuitBreaker


class NodeDirectory:
    def __init__(
        self,
        registry: NodeRegistry,
        prober: HealthProber,
        breaker_policy: BreakerPolicy,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._prober = prober
        self._policy = breaker_policy
        self._breakers: dict[str, CircuitBreaker] = {}
        self._reserved: dict[str, int] = defaultdict(int)
        self._rng = rng or random.Random()
        self._clock = clock

    async def start(self) -> None:
        await self.registry.start()
        await self._prober.start(self.registry.nodes)

    async def stop(self) -> None:
        await self._prober.stop()
        await self.registry.stop()

    def view(self) -> list[NodeRecord]:
        """The registry's nodes as this gateway sees them now."""
        return self._prober.overlay(self.registry.nodes())

    # -- choosing ------------------------------------------------------------------

    def select(
        self,
        policy: RetentionPolicy,
        expected_size: int,
        exclude: Collection[str] = (),
        strict: bool = False,
    ) -> NodeRecord | None:
        now = self._clock()
        return select_node(
            [n for n in self.view() if not n.draining],
            policy,
            expected_size,
            self._rng,
            reserved=self._reserved,
            exclude=exclude,
            is_open=lambda node_id: self.breaker(node_id).is_open(now),
            strict=strict,
        )

    def could_fit_anywhere(self, policy: RetentionPolicy, size: int) -> bool:
        """Is there a usable node big enough for `size` if nothing else were in flight?"""
        usable = [n for n in self.view() if not n.draining]
        return bool(eligible_nodes(usable, policy, size, {}))

    def any_usable(self, policy: RetentionPolicy) -> bool:
        return bool(eligible_nodes([n for n in self.view() if not n.draining], policy, 0, {}))

    def reserve(self, node_id: str, size: int) -> None:
        self._reserved[node_id] += size

    def release(self, node_id: str, size: int) -> None:
        self._reserved[node_id] -= size

    # -- circuit breakers ---------------------------------------------------------

    def breaker(self, node_id: str) -> CircuitBreaker:
        breaker = self._breakers.get(node_id)
        if breaker is None:
            breaker = self._breakers[node_id] = CircuitBreaker(self._policy)
        return breaker

    def acquire(self, node_id: str) -> bool:
        return self.breaker(node_id).acquire(self._clock())

    def succeeded(self, node_id: str) -> None:
        self.breaker(node_id).record_success(self._clock())

    def failed(self, node_id: str) -> None:
        self.breaker(node_id).record_failure(self._clock())

    def abandoned(self, node_id: str) -> None:
        self.breaker(node_id).release()

    async def healthy(self, node: NodeRecord) -> bool:
        """Does the node answer its health probe right now?"""
        return await self._prober.check(node)

    def breaker_states(self) -> dict[str, BreakerState]:
        return {node_id: b.state for node_id, b in self._breakers.items()}

    # -- readiness ----------------------------------------------------------------

    def readiness(self, horizon: float) -> tuple[bool, dict[str, object]]:
        """Ready when a writable node not draining was seen alive since `horizon`
        (a probe answer or a heartbeat)."""
        nodes = self.view()
        states = self.breaker_states()
        fresh = [
            n
            for n in nodes
            if n.writable
            and not n.draining
            and n.status == "ok"
            and n.last_seen is not None
            and n.last_seen >= horizon
        ]
        details: dict[str, object] = {
            "writable_nodes_ok": len(fresh),
            "registry_stale": self.registry.is_stale(),
            "nodes": {
                n.id: {
                    "mode": n.mode,
                    "status": n.status,
                    "draining": n.draining,
                    "circuit": states.get(n.id, BreakerState.CLOSED).value,
                }
                for n in nodes
            },
        }
        return bool(fresh), details
