"""Choosing a Storage Element: mode, health, room, priority, two random choices."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.models import RetentionPolicy
from ingester_gateway.registry import NodeRecord
from ingester_gateway.registry.selection import eligible_nodes, free_bytes, select_node


def node(
    node_id: str,
    mode: str = "rw",
    *,
    status: str = "ok",
    priority: int = 100,
    free: int | None = None,
) -> NodeRecord:
    return NodeRecord(
        id=node_id,
        url=f"http://{node_id}:8010",
        mode=mode,
        status=status,  # type: ignore[arg-type]
        priority=priority,
        capacity_available=free,
    )


def pick(
    nodes: list[NodeRecord],
    policy: RetentionPolicy = "permanent",
    size: int = 0,
    seed: int = 0,
    **kwargs: object,
) -> str | None:
    chosen = select_node(nodes, policy, size, random.Random(seed), **kwargs)  # type: ignore[arg-type]
    return None if chosen is None else chosen.id


@pytest.mark.parametrize(("policy", "mode"), [("temporary", "edit"), ("permanent", "rw")])
def test_the_policys_mode_is_preferred(policy: RetentionPolicy, mode: str) -> None:
    nodes = [node("edit-1", "edit"), node("rw-1", "rw")]
    for seed in range(20):
        assert pick(nodes, policy, seed=seed) == f"{mode}-1"


def test_the_preferred_mode_wins_over_a_better_priority() -> None:
    nodes = [node("edit-1", "edit", priority=1), node("rw-1", "rw", priority=500)]
    assert pick(nodes, "permanent") == "rw-1"


@pytest.mark.parametrize(("policy", "other"), [("temporary", "rw"), ("permanent", "edit")])
def test_any_writable_node_is_the_fallback(policy: RetentionPolicy, other: str) -> None:
    assert pick([node("only", other)], policy) == "only"


def test_a_full_preferred_node_falls_back_to_another_mode() -> None:
    nodes = [node("edit-1", "edit", free=10), node("rw-1", "rw", free=10_000)]
    assert pick(nodes, "temporary", size=100) == "rw-1"


@pytest.mark.parametrize("mode", ["ro", "ar"])
def test_read_only_and_archive_nodes_are_never_chosen(mode: str) -> None:
    nodes = [node("a", mode, priority=1, free=10**12), node("b", mode)]
    for policy in ("temporary", "permanent"):
        assert pick(nodes, policy) is None  # type: ignore[arg-type]
    assert pick([*nodes, node("w", "rw", priority=999)]) == "w"


@pytest.mark.parametrize("status", ["down", "degraded"])
def test_unhealthy_nodes_are_excluded(status: str) -> None:
    nodes = [node("sick", status=status, priority=1), node("well", priority=2)]
    assert pick(nodes) == "well"
    assert pick([nodes[0]]) is None


def test_a_node_not_yet_probed_is_usable() -> None:
    assert pick([node("new", status="unknown")]) == "new"


def test_capacity_counts_reservations() -> None:
    nodes = [node("a", free=1000)]
    assert pick(nodes, size=600, reserved={"a": 400}) == "a"
    assert pick(nodes, size=601, reserved={"a": 400}) is None
    assert pick(nodes, size=601, reserved={"other": 400}) == "a"


def test_unknown_capacity_always_has_room() -> None:
    assert pick([node("a", free=None)], size=10**15, reserved={"a": 10**15}) == "a"


def test_free_bytes_subtracts_the_reservation() -> None:
    assert free_bytes(node("a", free=1000), {"a": 300}) == 700
    assert free_bytes(node("a", free=None), {"a": 300}) is None


def test_the_best_priority_is_the_lowest_number() -> None:
    nodes = [node("low", priority=10, free=10**6), node("best", priority=1, free=10)]
    for seed in range(20):
        assert pick(nodes, seed=seed) == "best"


def test_among_two_equal_nodes_the_freer_is_chosen() -> None:
    nodes = [node("small", free=100), node("big", free=10_000)]
    for seed in range(20):
        assert pick(nodes, seed=seed) == "big"


def test_two_choices_favour_free_space_over_many_seeds() -> None:
    nodes = [node("n10", free=10), node("n20", free=20), node("n30", free=30)]
    picks = Counter(pick(nodes, seed=seed) for seed in range(1000))
    assert picks["n10"] == 0  # the fullest node never wins a pair
    assert 600 <= picks["n30"] <= 730  # it is in 2 of the 3 pairs
    assert 270 <= picks["n20"] <= 400


def test_two_choices_spread_load_over_equal_nodes() -> None:
    nodes = [node(f"n{i}", free=None) for i in range(4)]
    picks = Counter(pick(nodes, seed=seed) for seed in range(2000))
    assert set(picks) == {"n0", "n1", "n2", "n3"}


def test_the_same_seed_gives_the_same_choice() -> None:
    nodes = [node(f"n{i}", free=100 + i) for i in range(6)]
    assert [pick(nodes, seed=s) for s in range(30)] == [pick(nodes, seed=s) for s in range(30)]


def test_excluded_nodes_are_not_chosen() -> None:
    nodes = [node("a", priority=1), node("b", priority=2)]
    assert pick(nodes, exclude={"a"}) == "b"
    assert pick(nodes, exclude={"a", "b"}) is None


def test_nodes_with_an_open_circuit_are_not_chosen() -> None:
    nodes = [node("a", priority=1), node("b", priority=2)]
    assert pick(nodes, is_open=lambda node_id: node_id == "a") == "b"


def test_no_nodes_choose_none() -> None:
    assert pick([]) is None


def test_eligible_nodes_lists_only_the_preferred_mode_when_there_is_one() -> None:
    nodes = [node("e", "edit"), node("r", "rw"), node("o", "ro")]
    assert [n.id for n in eligible_nodes(nodes, "temporary", 0, {})] == ["e"]
    assert [n.id for n in eligible_nodes(nodes[1:], "temporary", 0, {})] == ["r"]


node_strategy = st.builds(
    node,
    node_id=st.text("abcdefgh", min_size=1, max_size=3),
    mode=st.sampled_from(["edit", "rw", "ro", "ar"]),
    status=st.sampled_from(["ok", "degraded", "down", "unknown"]),
    priority=st.integers(0, 3),
    free=st.one_of(st.none(), st.integers(0, 1000)),
)


@given(
    nodes=st.lists(node_strategy, max_size=8, unique_by=lambda n: n.id),
    policy=st.sampled_from(["temporary", "permanent"]),
    size=st.integers(0, 1000),
    seed=st.integers(0, 2**32),
)
def test_the_choice_is_eligible_and_of_the_best_priority(
    nodes: list[NodeRecord], policy: RetentionPolicy, size: int, seed: int
) -> None:
    eligible = eligible_nodes(nodes, policy, size, {})
    chosen = select_node(nodes, policy, size, random.Random(seed))
    if not eligible:
        assert chosen is None
        return
    assert chosen in eligible
    assert chosen.writable and chosen.status in ("ok", "unknown")
    assert chosen.priority == min(n.priority for n in eligible)
    peers = [n for n in eligible if n.priority == chosen.priority]
    if len(peers) > 1:  # two choices: never the strictly fullest of its peers
        key = [-1 if n.capacity_available is None else n.capacity_available for n in peers]
        fullest = min(key)
        if key.count(fullest) == 1:
            assert (chosen.capacity_available if chosen.capacity_available is not None else -1) != (
                fullest
            )
