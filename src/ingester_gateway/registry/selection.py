"""Choosing the Storage Element for an upload. Pure: randomness is passed in."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence

from ingester_gateway.models import MODE_BY_RETENTION, RetentionPolicy
from ingester_gateway.registry import NodeRecord


def eligible_nodes(
    nodes: Sequence[NodeRecord],
    policy: RetentionPolicy,
    expected_size: int,
    reserved: Mapping[str, int],
    exclude: Collection[str] = (),
    is_open: Callable[[str], bool] = lambda _node_id: False,
    strict: bool = False,
) -> list[NodeRecord]:
    """Writable, healthy, circuit not open, room for the upload; nodes of the
    policy's mode when there are any, otherwise (unless `strict`) any writable node."""
    usable = [
        n
        for n in nodes
        if n.writable
        and n.status in ("ok", "unknown")
        and n.id not in exclude
        and not is_open(n.id)
        and _has_room(n, reserved, expected_size)
    ]
    wanted = MODE_BY_RETENTION[policy]
    preferred = [n for n in usable if n.mode == wanted]
    return preferred if preferred or strict else usable


def _has_room(node: NodeRecord, reserved: Mapping[str, int], size: int) -> bool:
    free = free_bytes(node, reserved)
    return free is None or free >= size


def free_bytes(node: NodeRecord, reserved: Mapping[str, int]) -> int | None:
    if node.capacity_available is None:
        return None
    return node.capacity_available - reserved.get(node.id, 0)


def select_node(
    nodes: Sequence[NodeRecord],
    policy: RetentionPolicy,
    expected_size: int,
    rng: random.Random,
    reserved: Mapping[str, int] | None = None,
    exclude: Collection[str] = (),
    is_open: Callable[[str], bool] = lambda _node_id: False,
    strict: bool = False,
) -> NodeRecord | None:
    """Among the eligible nodes of the best (lowest) priority, two random choices:
    the one with more free space wins. None when no node can take the upload."""
    reserved = reserved or {}
    candidates = eligible_nodes(nodes, policy, expected_size, reserved, exclude, is_open, strict)
    if not candidates:
        return None
    best = min(n.priority for n in candidates)
    top = [n for n in candidates if n.priority == best]
    if len(top) == 1:
        return top[0]
    first, second = rng.sample(top, 2)
    return max((first, second), key=lambda n: _free_key(n, reserved))


def _free_key(node: NodeRecord, reserved: Mapping[str, int]) -> int:
    free = free_bytes(node, reserved)
    return free if free is not None else -1
