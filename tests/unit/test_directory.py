"""NodeDirectory: the registry's nodes with the gateway's own probes, breakers and
reservations laid over them: which node an upload gets, and whether the gateway is ready."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from ingester_gateway.registry import NodeRecord
from ingester_gateway.registry.directory import NodeDirectory
from ingester_gateway.registry.health import HealthProber
from ingester_gateway.resilience import BreakerPolicy, BreakerState
from ingester_gateway.upstream.wire import Capacity, CapacityReply
from tests.kit import FakeClock, run

T = TypeVar("T")
POLICY = BreakerPolicy(failure_threshold=2, min_calls=1000, cooldown_seconds=10.0)


class ListRegistry:
    """A registry whose records and staleness the test sets."""

    def __init__(self, *records: NodeRecord) -> None:
        self.records = list(records)
        self.stale = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def nodes(self) -> list[NodeRecord]:
        return self.records

    def is_stale(self) -> bool:
        return self.stale


def node(node_id: str, mode: str = "rw", **changes: Any) -> NodeRecord:
    return NodeRecord(id=node_id, url=f"http://{node_id}:8010", mode=mode, **changes)


def healthy(free: int | None = None, mode: str | None = None) -> CapacityReply:
    capacity = None if free is None else Capacity(total=10**6, used=10**6 - free, available=free)
    return CapacityReply(storage_id=None, mode=mode, capacity=capacity, health="healthy")


class Nodes:
    """A directory over a ListRegistry, probed by answers the test scripts per node
    (None: the node does not answer), on one fake clock."""

    def __init__(self, *records: NodeRecord, seed: int = 0) -> None:
        self.clock = FakeClock()
        self.registry = ListRegistry(*records)
        self.answers: dict[str, CapacityReply | None] = {}
        self.probed: list[str] = []
        self.directory = NodeDirectory(
            self.registry,
            HealthProber(self.probe, interval=3600, clock=self.clock),
            POLICY,
            rng=random.Random(seed),
            clock=self.clock,
        )

    async def probe(self, record: NodeRecord) -> CapacityReply | None:
        self.probed.append(record.id)
        return self.answers.get(record.id, healthy())

    def pick(self, size: int = 0, policy: str = "permanent", **kwargs: Any) -> str | None:
        chosen = self.directory.select(policy, size, **kwargs)  # type: ignore[arg-type]
        return None if chosen is None else chosen.id


def started(nodes: Nodes, scenario: Callable[[NodeDirectory], Awaitable[T]]) -> T:
    async def go() -> T:
        await nodes.directory.start()
        try:
            return await scenario(nodes.directory)
        finally:
            await nodes.directory.stop()

    return run(go())


def probed(*records: NodeRecord, answers: dict[str, CapacityReply | None] | None = None) -> Nodes:
    """A directory started (so probed once) and stopped again: its view stays."""
    nodes = Nodes(*records)
    nodes.answers.update(answers or {})

    async def nothing(_: NodeDirectory) -> None:
        return None

    started(nodes, nothing)
    return nodes


def fail(nodes: Nodes, node_id: str, times: int = POLICY.failure_threshold) -> None:
    for _ in range(times):
        assert nodes.directory.acquire(node_id)
        nodes.directory.failed(node_id)


# -- the view ------------------------------------------------------------------------


def test_start_probes_every_node_before_it_returns() -> None:
    nodes = Nodes(node("a"), node("b"))
    nodes.answers = {"a": healthy(free=500), "b": None}

    async def scenario(directory: NodeDirectory) -> list[tuple[str, str, int | None]]:
        return [(n.id, n.status, n.capacity_available) for n in directory.view()]

    assert started(nodes, scenario) == [("a", "ok", 500), ("b", "down", None)]
    assert sorted(nodes.probed) == ["a", "b"]


def test_the_view_follows_the_registry() -> None:
    nodes = probed(node("a"))
    nodes.registry.records = [node("a"), node("new", status="ok")]  # not probed yet
    assert [(n.id, n.status) for n in nodes.directory.view()] == [("a", "ok"), ("new", "ok")]
    nodes.registry.records = [node("new")]
    assert [n.id for n in nodes.directory.view()] == ["new"]


# -- selection -------------------------------------------------------------------------


def test_selection_skips_a_node_whose_circuit_is_open() -> None:
    nodes = probed(node("a", priority=1), node("b", priority=2))
    assert nodes.pick() == "a"
    fail(nodes, "a")
    assert nodes.directory.breaker_states()["a"] is BreakerState.OPEN
    assert nodes.pick() == "b"
    nodes.clock.advance(POLICY.cooldown_seconds)
    assert nodes.pick() == "a"  # its probe may go now


def test_selection_skips_a_half_open_node_whose_probe_is_out() -> None:
    nodes = probed(node("a", priority=1), node("b", priority=2))
    fail(nodes, "a")
    nodes.clock.advance(POLICY.cooldown_seconds)
    assert nodes.directory.acquire("a")  # the one probe request
    assert nodes.pick() == "b"
    nodes.directory.succeeded("a")
    assert nodes.pick() == "a"


def test_selection_skips_draining_nodes() -> None:
    nodes = probed(node("a", priority=1, draining=True), node("b", priority=2))
    assert nodes.pick() == "b"  # though "a" has the better priority
    nodes.registry.records = [node("a", draining=True)]
    assert nodes.pick() is None


def test_selection_skips_nodes_that_do_not_answer() -> None:
    nodes = probed(node("a", priority=1), node("b", priority=2), answers={"a": None})
    assert nodes.pick() == "b"
    nodes.registry.records = [node("a")]
    assert nodes.pick() is None


def test_selection_skips_nodes_the_registry_calls_down() -> None:
    nodes = probed(node("a", priority=1, status="down"), node("b", priority=2))
    assert nodes.pick() == "b"


def test_selection_honours_exclude() -> None:
    nodes = probed(node("a", priority=1), node("b", priority=2))
    assert nodes.pick(exclude={"a"}) == "b"
    assert nodes.pick(exclude={"a", "b"}) is None


def test_a_reservation_reduces_a_nodes_free_space_until_released() -> None:
    nodes = probed(node("a"), node("b"), answers={"a": healthy(free=1000), "b": healthy(600)})
    assert nodes.pick(size=100) == "a"  # two choices: the freer one
    nodes.directory.reserve("a", 700)  # a: 300 left
    assert nodes.pick(size=100) == "b"
    assert nodes.pick(size=700) is None  # neither has 700 left
    nodes.directory.release("a", 700)
    assert nodes.pick(size=700) == "a"


def test_reservations_add_up() -> None:
    nodes = probed(node("a"), answers={"a": healthy(free=1000)})
    nodes.directory.reserve("a", 400)
    nodes.directory.reserve("a", 400)
    assert nodes.pick(size=201) is None
    assert nodes.pick(size=200) == "a"
    nodes.directory.release("a", 400)
    assert nodes.pick(size=600) == "a"


def test_could_fit_anywhere_ignores_reservations_but_not_capacity() -> None:
    """The difference between 'wait and retry' (503) and 'too big for any node' (507)."""
    nodes = probed(node("a"), answers={"a": healthy(free=1000)})
    nodes.directory.reserve("a", 800)
    assert nodes.pick(size=500) is None
    assert nodes.directory.could_fit_anywhere("permanent", 500)
    assert nodes.directory.could_fit_anywhere("permanent", 1000)
    assert not nodes.directory.could_fit_anywhere("permanent", 1001)


def test_could_fit_anywhere_ignores_draining_nodes() -> None:
    nodes = probed(node("a", draining=True), answers={"a": healthy(free=1000)})
    assert not nodes.directory.could_fit_anywhere("permanent", 10)


@pytest.mark.parametrize(
    ("record", "answer", "usable"),
    [
        (node("a"), healthy(), True),
        (node("a", mode="edit"), healthy(), True),  # any writable node is a fallback
        (node("a", mode="ro"), healthy(), False),
        (node("a"), healthy(mode="ro"), False),  # the SE says it is read-only now
        (node("a"), None, False),
        (node("a", draining=True), healthy(), False),
        (node("a", status="down"), healthy(), False),
    ],
)
def test_any_usable(record: NodeRecord, answer: CapacityReply | None, usable: bool) -> None:
    nodes = probed(record, answers={"a": answer})
    assert nodes.directory.any_usable("permanent") is usable


def test_any_usable_counts_a_node_whose_circuit_is_open() -> None:
    """It will be back after the cool-down: 'circuits open', not 'no storage at all'."""
    nodes = probed(node("a"))
    fail(nodes, "a")
    assert nodes.pick() is None
    assert nodes.directory.any_usable("permanent")


# -- breakers --------------------------------------------------------------------------


def test_the_breaker_goes_open_half_open_closed_through_the_directory() -> None:
    nodes = probed(node("a"))
    d = nodes.directory
    assert d.breaker_states() == {}  # none made before a node is used
    assert d.acquire("a")
    d.failed("a")
    assert d.breaker_states() == {"a": BreakerState.CLOSED}
    assert d.acquire("a")
    d.failed("a")
    assert d.breaker_states() == {"a": BreakerState.OPEN}
    assert not d.acquire("a")
    nodes.clock.advance(POLICY.cooldown_seconds)
    assert d.acquire("a")
    assert d.breaker_states() == {"a": BreakerState.HALF_OPEN}
    assert not d.acquire("a")
    d.succeeded("a")
    assert d.breaker_states() == {"a": BreakerState.CLOSED}


def test_a_failed_probe_reopens_the_circuit() -> None:
    nodes = probed(node("a"))
    fail(nodes, "a")
    nodes.clock.advance(POLICY.cooldown_seconds)
    assert nodes.directory.acquire("a")
    nodes.directory.failed("a")
    assert nodes.directory.breaker_states() == {"a": BreakerState.OPEN}
    assert not nodes.directory.acquire("a")


def test_an_abandoned_probe_frees_the_slot_for_the_next_request() -> None:
    nodes = probed(node("a"))
    fail(nodes, "a")
    nodes.clock.advance(POLICY.cooldown_seconds)
    assert nodes.directory.acquire("a")
    nodes.directory.abandoned("a")  # e.g. the client went away: says nothing of the node
    assert nodes.directory.breaker_states() == {"a": BreakerState.HALF_OPEN}
    assert nodes.directory.acquire("a")


def test_each_node_has_its_own_breaker() -> None:
    nodes = probed(node("a"), node("b"))
    fail(nodes, "a")
    assert nodes.directory.acquire("b")
    assert nodes.directory.breaker_states() == {"a": BreakerState.OPEN, "b": BreakerState.CLOSED}


# -- readiness --------------------------------------------------------------------------


def test_ready_with_a_writable_node_that_answered_since_the_horizon() -> None:
    nodes = probed(node("a"))  # probed at clock 1000
    ready, details = nodes.directory.readiness(horizon=990.0)
    assert ready
    assert details == {
        "writable_nodes_ok": 1,
        "registry_stale": False,
        "nodes": {"a": {"mode": "rw", "status": "ok", "draining": False, "circuit": "closed"}},
    }


def test_not_ready_when_the_last_answer_is_older_than_the_horizon() -> None:
    nodes = probed(node("a"))
    assert nodes.directory.readiness(horizon=1000.0)[0]
    assert not nodes.directory.readiness(horizon=1000.001)[0]


def test_not_ready_before_any_node_was_seen_alive() -> None:
    nodes = Nodes(node("a"))  # never started: never probed
    ready, details = nodes.directory.readiness(horizon=0.0)
    assert not ready
    assert details["writable_nodes_ok"] == 0


def test_a_heartbeat_counts_as_seen_alive() -> None:
    nodes = Nodes(node("a", status="ok", last_seen=995.0))  # from the registry, not probed
    assert nodes.directory.readiness(horizon=990.0)[0]


@pytest.mark.parametrize(
    ("record", "answer"),
    [
        (node("a", mode="ro"), healthy()),
        (node("a", mode="ar"), healthy()),
        (node("a"), healthy(mode="ro")),
        (node("a", draining=True), healthy()),
        (node("a"), None),
        (node("a", status="down"), healthy()),
        (node("a"), CapacityReply(health="degraded")),
    ],
)
def test_not_ready_without_a_fresh_writable_ok_node(
    record: NodeRecord, answer: CapacityReply | None
) -> None:
    nodes = probed(record, answers={"a": answer})
    ready, details = nodes.directory.readiness(horizon=0.0)
    assert not ready
    assert details["writable_nodes_ok"] == 0


def test_one_good_node_among_bad_ones_is_enough() -> None:
    nodes = probed(
        node("ro", mode="ro"), node("gone"), node("ok"), answers={"gone": None, "ro": healthy()}
    )
    ready, details = nodes.directory.readiness(horizon=0.0)
    assert ready and details["writable_nodes_ok"] == 1
    assert set(details["nodes"]) == {"ro", "gone", "ok"}  # type: ignore[call-overload]


def test_readiness_reports_a_stale_registry_and_open_circuits() -> None:
    nodes = probed(node("a"), node("b"))
    nodes.registry.stale = True
    fail(nodes, "b")
    _, details = nodes.directory.readiness(horizon=0.0)
    assert details["registry_stale"] is True
    circuits = {k: v["circuit"] for k, v in details["nodes"].items()}  # type: ignore[attr-defined]
    assert circuits == {"a": "closed", "b": "open"}


def test_the_registry_records_are_not_changed_by_the_overlay() -> None:
    record = node("a")
    nodes = probed(record, answers={"a": None})
    assert nodes.directory.view()[0].status == "down"
    assert nodes.registry.records == [record]
    assert record.status == "unknown"
