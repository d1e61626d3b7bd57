"""apply_probe: a node as its latest capacity answer shows it."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from ingester_gateway.registry import NodeRecord
from ingester_gateway.registry.health import HealthProber, apply_probe
from ingester_gateway.upstream.wire import Capacity, CapacityReply

NODE = NodeRecord(
    id="se-1",
    url="http://se-1:8010",
    mode="rw",
    status="ok",
    priority=5,
    capacity_total=1000,
    capacity_used=100,
    capacity_available=900,
    last_seen=50.0,
)


def test_no_answer_marks_the_node_down_and_keeps_the_rest() -> None:
    probed = apply_probe(NODE, None, now=100.0)
    assert probed.status == "down"
    assert probed.last_seen == 50.0  # not seen now
    assert (probed.mode, probed.priority, probed.capacity_available) == ("rw", 5, 900)


@pytest.mark.parametrize(
    ("health", "status"),
    [(None, "ok"), ("healthy", "ok"), ("ok", "ok"), ("degraded", "degraded"), ("sick", "degraded")],
)
def test_the_health_field_sets_the_status(health: str | None, status: str) -> None:
    probed = apply_probe(NODE, CapacityReply(health=health), now=100.0)
    assert probed.status == status
    assert probed.last_seen == 100.0


def test_an_answer_updates_mode_and_capacity() -> None:
    reply = CapacityReply(
        storage_id="se-1",
        mode="ro",
        capacity=Capacity(total=2000, used=1500, available=500),
        health="healthy",
    )
    probed = apply_probe(NODE, reply, now=100.0)
    assert probed.mode == "ro" and not probed.writable
    assert (probed.capacity_total, probed.capacity_used, probed.capacity_available) == (
        2000,
        1500,
        500,
    )
    assert probed.priority == 5
    assert probed.url == NODE.url


def test_an_answer_without_mode_or_capacity_keeps_the_known_ones() -> None:
    probed = apply_probe(NODE, CapacityReply(health="healthy"), now=100.0)
    assert probed.mode == "rw"
    assert probed.capacity_available == 900


def test_a_down_node_comes_back_when_it_answers() -> None:
    """Each answer is laid over the registry's record, never over the last overlay."""
    replies: list[CapacityReply | None] = [None, CapacityReply(health="healthy")]

    async def probe(node: NodeRecord) -> CapacityReply | None:
        return replies.pop(0)

    async def scenario() -> list[str]:
        prober = HealthProber(probe, clock=lambda: 100.0)
        seen = []
        for _ in range(2):
            await prober.probe([NODE])
            seen.append(prober.overlay([NODE])[0].status)
        return seen

    assert asyncio.run(scenario()) == ["down", "ok"]


@pytest.mark.parametrize(
    ("listed", "health", "status"),
    [("down", "healthy", "down"), ("degraded", "healthy", "degraded"), ("down", "sick", "down")],
)
def test_an_answer_never_overrules_a_registry_that_calls_the_node_down(
    listed: str, health: str, status: str
) -> None:
    """The Admin Module's `is_available: false` stands, however well the SE answers."""
    node = msgspec.structs.replace(NODE, status=listed)
    assert apply_probe(node, CapacityReply(health=health), now=100.0).status == status


def test_an_answer_never_makes_a_node_listed_not_writable_writable() -> None:
    """The Admin Module's `is_writable: false` (mode ro) stands over the SE's `rw`."""
    node = msgspec.structs.replace(NODE, mode="ro")
    probed = apply_probe(node, CapacityReply(mode="rw", health="healthy"), now=100.0)
    assert probed.mode == "ro" and not probed.writable


def test_the_original_record_is_not_changed() -> None:
    apply_probe(NODE, None, now=100.0)
    assert NODE.status == "ok"
