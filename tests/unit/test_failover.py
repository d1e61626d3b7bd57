"""The failover walk and its table (pure): which failure counts against a node, when
another node is tried, what the client is told, and where the bytes are reserved."""

from __future__ import annotations

import itertools
import random

import pytest

from ingester_gateway.registry import NodeRecord
from ingester_gateway.resilience import Backoff, RetryPolicy
from ingester_gateway.upload.failover import (
    FAILURES,
    Failover,
    GiveUp,
    Retry,
    must_compensate,
    no_node_error,
)
from ingester_gateway.upstream.client import FailureKind, UpstreamError

A = NodeRecord(id="a", url="http://a", mode="rw")
B = NodeRecord(id="b", url="http://b", mode="rw")
RETRY = RetryPolicy(max_attempts=4, deadline_seconds=10.0, backoff=Backoff(base=0.1, cap=1.0))


def walk(reservation: int = 100, retry: RetryPolicy = RETRY) -> Failover:
    ids = (f"file-{n}" for n in itertools.count())
    return Failover(
        retry, random.Random(7), started=0.0, reservation=reservation, new_file_id=ids.__next__
    )


def failure(kind: FailureKind) -> UpstreamError:
    return UpstreamError(kind, f"{kind} happened")


def test_node_failures_count_against_the_node_and_refusals_do_not() -> None:
    counted = {kind for kind, rule in FAILURES.items() if rule.node_fault}
    assert counted == {"connect", "timeout", "server", "protocol"}


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("too_large", 413, "payload_too_large"),
        ("unauthorized", 502, "storage_failed"),
    ],
)
def test_a_failure_no_other_node_can_help_gives_up_at_once(
    kind: FailureKind, status: int, code: str
) -> None:
    w = walk()
    attempt, _ = w.begin(A)
    decision = w.failed(attempt, failure(kind), replayable=True, now=0.0)
    assert isinstance(decision, GiveUp)
    assert (decision.error.status, decision.error.code) == (status, code)
    assert f"{kind} happened" in decision.error.message


@pytest.mark.parametrize("kind", ["connect", "timeout", "server", "protocol", "refused", "full"])
def test_a_failure_another_node_may_fix_is_retried_after_a_jittered_backoff(
    kind: FailureKind,
) -> None:
    w = walk()
    attempt, _ = w.begin(A)
    decision = w.failed(attempt, failure(kind), replayable=True, now=0.0)
    assert isinstance(decision, Retry)
    assert 0.0 <= decision.delay <= 0.1  # the first retry's ceiling is the base
    assert w.tried == ["a"]


def test_a_failure_past_the_replay_buffer_is_a_503_that_says_retry() -> None:
    w = walk()
    attempt, _ = w.begin(A)
    decision = w.failed(attempt, failure("server"), replayable=False, now=0.0)
    assert isinstance(decision, GiveUp)
    assert (decision.error.status, decision.error.code) == (503, "storage_failed_mid_upload")
    assert (b"retry-after", b"5") in decision.error.headers


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("connect", 503, "no_storage_available"), ("full", 507, "insufficient_storage")],
)
def test_after_the_last_attempt_the_last_failure_decides_the_answer(
    kind: FailureKind, status: int, code: str
) -> None:
    w = walk()
    decisions = []
    for _ in range(RETRY.max_attempts):
        attempt, _ = w.begin(A)
        decisions.append(w.failed(attempt, failure(kind), replayable=True, now=0.0))
    assert all(isinstance(d, Retry) for d in decisions[:-1])
    last = decisions[-1]
    assert isinstance(last, GiveUp)
    assert (last.error.status, last.error.code) == (status, code)


def test_no_retry_starts_past_the_deadline() -> None:
    w = walk()
    attempt, _ = w.begin(A)
    decision = w.failed(attempt, failure("timeout"), replayable=True, now=9.99)
    assert isinstance(decision, GiveUp)
    assert decision.error.code == "no_storage_available"


def test_nodes_whose_circuits_refuse_every_try_end_in_all_circuits_open() -> None:
    w = walk()
    decision: Retry | GiveUp = Retry(0.0)
    while isinstance(decision, Retry):
        w.begin(A)
        decision = w.skipped(A, now=0.0)
    assert "all circuits open" in decision.error.message
    assert decision.error.status == 503


def test_the_bytes_are_reserved_on_exactly_the_node_being_tried() -> None:
    w = walk(reservation=100)
    _, moves = w.begin(A)
    assert moves == [("a", 100)]
    _, moves = w.begin(A)  # the same node again: nothing moves
    assert moves == []
    _, moves = w.begin(B)
    assert moves == [("a", -100), ("b", 100)]
    assert w.end() == [("b", -100)]
    assert w.end() == []  # released once


def test_every_attempt_stores_under_a_file_id_of_its_own() -> None:
    w = walk()
    ids = {w.begin(A)[0].file_id for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize(
    ("committed", "failure_kind", "owed"),
    [
        (False, "server", False),  # the closing boundary never went out
        (False, None, False),
        (True, "server", True),  # the SE may have stored it before failing
        (True, "timeout", True),
        (True, None, True),  # cancelled after the commit
        (True, "connect", False),  # the whole body was never delivered
    ],
)
def test_a_delete_is_owed_exactly_when_the_se_may_hold_the_file(
    committed: bool, failure_kind: FailureKind | None, owed: bool
) -> None:
    assert must_compensate(committed, failure_kind) is owed


def test_no_node_is_507_only_when_waiting_cannot_help() -> None:
    full = no_node_error(any_usable=True, fits_anywhere=False, size=10)
    assert (full.status, full.code) == (507, "insufficient_storage")
    for any_usable, fits in [(False, False), (True, True)]:
        busy = no_node_error(any_usable=any_usable, fits_anywhere=fits, size=10)
        assert (busy.status, busy.code) == (503, "no_storage_available")
    unknown_size = no_node_error(any_usable=True, fits_anywhere=False, size=0)
    assert unknown_size.status == 503
