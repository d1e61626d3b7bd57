"""Compensations, the handler of owed deletes: done when the node says the file is gone;
any other outcome is retried, counted by node and reason, and logged at every attempt
(with what to do about it when the node refused our credential)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from ingester_gateway.observability import Metrics
from ingester_gateway.outbox.compensations import Compensations
from ingester_gateway.outbox.jobs import DeleteFile
from ingester_gateway.outbox.journal import Journal
from ingester_gateway.outbox.queue import Outbox
from ingester_gateway.registry import NodeRecord
from ingester_gateway.upstream.client import DeleteOutcome
from tests.kit import FakeClock, run


def owed(file_id: str = "f-1", node_id: str = "se-1") -> DeleteFile:
    return DeleteFile(
        id=f"job-{file_id}",
        node_id=node_id,
        node_url=f"http://{node_id}:8010",
        file_id=file_id,
        reason="checksum_mismatch",
        created_at=1000.0,
    )


class Deleter:
    """The injected delete: records (node id, node url, file id), answers as scripted."""

    def __init__(self, *outcomes: DeleteOutcome) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, node: NodeRecord, file_id: str) -> DeleteOutcome:
        self.calls.append((node.id, node.url, file_id))
        return self.outcomes.pop(0) if self.outcomes else "deleted"


def attempt(
    deleter: Deleter, *jobs: DeleteFile, metrics: Metrics | None = None
) -> tuple[list[bool], list[Any]]:
    """Each job through a fresh Compensations; what it answered and what it logged."""
    handler = Compensations(deleter, metrics or Metrics())

    async def go() -> list[bool]:
        return [await handler(job) for job in jobs]

    with structlog.testing.capture_logs() as logs:
        answers = run(go())
    return answers, logs


def failures(metrics: Metrics, node: str, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "ingester_compensation_failures_total", {"node": node, "reason": reason}
    )


def test_a_deleted_file_is_done_and_logged() -> None:
    metrics = Metrics()
    deleter = Deleter("deleted")
    answers, logs = attempt(deleter, owed(), metrics=metrics)
    assert answers == [True]
    assert deleter.calls == [("se-1", "http://se-1:8010", "f-1")]
    (done,) = logs
    assert (done["event"], done["log_level"]) == ("compensation_done", "info")
    assert (done["node"], done["file_id"], done["reason"]) == ("se-1", "f-1", "checksum_mismatch")
    assert failures(metrics, "se-1", "forbidden") is None
    assert failures(metrics, "se-1", "failed") is None


def test_a_forbidden_delete_is_retried_counted_and_logged_with_a_hint() -> None:
    metrics = Metrics()
    answers, logs = attempt(Deleter("forbidden"), owed(), metrics=metrics)
    assert answers == [False]
    assert failures(metrics, "se-1", "forbidden") == 1
    (retry,) = logs
    assert (retry["event"], retry["log_level"], retry["outcome"]) == (
        "compensation_retry",
        "warning",
        "forbidden",
    )
    assert (retry["node"], retry["file_id"], retry["reason"]) == (
        "se-1",
        "f-1",
        "checksum_mismatch",
    )
    assert "service account" in retry["hint"]
    assert "INGESTER_SERVICE_CLIENT_ID" in retry["hint"]


def test_a_failed_delete_is_retried_counted_and_logged_without_a_hint() -> None:
    metrics = Metrics()
    answers, logs = attempt(Deleter("failed"), owed(), metrics=metrics)
    assert answers == [False]
    assert failures(metrics, "se-1", "failed") == 1
    assert failures(metrics, "se-1", "forbidden") is None
    (retry,) = logs
    assert (retry["event"], retry["outcome"], retry["hint"]) == (
        "compensation_retry",
        "failed",
        None,
    )


def test_failures_are_counted_by_node_and_reason() -> None:
    metrics = Metrics()
    jobs = [owed("f-1", "se-1"), owed("f-2", "se-1"), owed("f-3", "se-2"), owed("f-4", "se-2")]
    answers, _ = attempt(
        Deleter("forbidden", "forbidden", "failed", "deleted"), *jobs, metrics=metrics
    )
    assert answers == [False, False, False, True]
    assert [
        failures(metrics, node, reason)
        for node in ("se-1", "se-2")
        for reason in ("forbidden", "failed")
    ] == [2, None, None, 1]


def test_the_delete_goes_to_the_node_the_job_names() -> None:
    deleter = Deleter()
    attempt(deleter, owed("f-1", "se-a"), owed("f-2", "se-b"))
    assert deleter.calls == [
        ("se-a", "http://se-a:8010", "f-1"),
        ("se-b", "http://se-b:8010", "f-2"),
    ]


def test_in_the_outbox_a_refused_delete_is_logged_at_every_retry_until_it_succeeds(
    tmp_path: Path,
) -> None:
    """The operator hears of a missing credential at each attempt, with backoff between
    them, and the job goes once the node deletes the file."""
    clock = FakeClock()
    metrics = Metrics()
    deleter = Deleter("forbidden", "forbidden", "forbidden", "deleted")

    async def go() -> list[object]:
        journal = Journal(tmp_path)
        journal.open()
        outbox = Outbox(None, journal, metrics, clock=clock)
        outbox.handle(DeleteFile, Compensations(deleter, metrics))
        try:
            await outbox.owe_delete(
                NodeRecord(id="se-1", url="http://se-1:8010", mode="rw"), "f-1", "aborted"
            )
            for _ in range(120):  # two minutes of rounds, a second apart
                await outbox.work_once()
                clock.advance(1.0)
            return [len(deleter.calls), journal.pending()]
        finally:
            journal.close()

    with structlog.testing.capture_logs() as logs:
        outcome = run(go())
    assert outcome == [4, []]
    assert [e["event"] for e in logs if e["event"].startswith("compensation_")] == [
        "compensation_retry",
        "compensation_retry",
        "compensation_retry",
        "compensation_done",
    ]
    assert failures(metrics, "se-1", "forbidden") == 3
