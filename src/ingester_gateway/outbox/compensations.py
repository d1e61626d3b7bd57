"""Owed deletes (DeleteFile jobs): a failed upload's copy, a finalized file's source.

Each attempt that does not remove the file is logged with its reason and counted
(`ingester_compensation_failures_total{node, reason}`), so a gateway that lacks the
credential a delete needs (rw nodes take deletes from service accounts only) says so
at every retry, with backoff, instead of retrying silently forever."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ingester_gateway.observability import Metrics, get_logger
from ingester_gateway.outbox.jobs import DeleteFile
from ingester_gateway.registry import NodeRecord
from ingester_gateway.upstream.client import DeleteOutcome

_log = get_logger("ingester_gateway.outbox.compensations")

# Deletes a file on a node, with the credential background work may use.
Deleter = Callable[[NodeRecord, str], Awaitable[DeleteOutcome]]


class Compensations:
    def __init__(self, delete: Deleter, metrics: Metrics) -> None:
        self._delete = delete
        self._metrics = metrics

    async def __call__(self, job: DeleteFile) -> bool:
        outcome = await self._delete(node_of(job), job.file_id)
        if outcome == "deleted":
            _log.info("compensation_done", node=job.node_id, file_id=job.file_id, reason=job.reason)
            return True
        self._metrics.compensation_failures.labels(job.node_id, outcome).inc()
        _log.warning(
            "compensation_retry",
            node=job.node_id,
            file_id=job.file_id,
            reason=job.reason,
            outcome=outcome,
            hint="rw nodes delete only for a service account: set INGESTER_SERVICE_CLIENT_ID"
            if outcome == "forbidden"
            else None,
        )
        return False


def node_of(job: DeleteFile) -> NodeRecord:
    return NodeRecord(id=job.node_id, url=job.node_url, mode="rw")
