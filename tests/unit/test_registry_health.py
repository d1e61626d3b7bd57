"""apply_probe: a node as its latest capacity answer shows it."""

from __future__ import annotations

import pytest

from ingester_gateway.registry import NodeRecord
from ingester_gateway.registry.health import apply_probe
from ingester_gateway.upstream import Capacity, CapacityReply

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
    down = apply_probe(NODE, None, now=100.0)
    assert apply_probe(down, CapacityReply(health="healthy"), now=110.0).status == "ok"


def test_the_original_record_is_not_changed() -> None:
    apply_probe(NODE, None, now=100.0)
    assert NODE.status == "ok"
