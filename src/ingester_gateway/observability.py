"""Metrics (Prometheus) and structured logs (structlog). Updated per upload or per
block, never per body piece, so they stay off the hot path."""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import traceback
from typing import Any

import msgspec
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(header: bytes | None) -> str:
    """The client's X-Request-ID when it is sane, else a fresh one."""
    if header:
        text = header.decode("latin-1")
        if _REQUEST_ID.match(text):
            return text
    return secrets.token_hex(16)  # as unguessable as uuid4().hex, a third of the cost


# Why a compensation attempt did not remove a file (ingester_compensation_failures_total).
COMPENSATION_FAILURES = ("forbidden", "failed")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
        # of this process (with several workers, /metrics shows the answering worker's).
        ProcessCollector(registry=r)
        self.uploads = Counter(
            "ingester_uploads_total",
            "Finished uploads by outcome and HTTP status",
            ["outcome", "status"],
            registry=r,
        )
        self.node_uploads = Counter(
            "ingester_node_uploads_total",
            "Uploads per storage element and outcome",
            ["node", "outcome"],
            registry=r,
        )
        self.bytes_in = Counter(
            "ingester_bytes_received_total", "Body bytes received from clients", registry=r
        )
        self.bytes_out = Counter(
            "ingester_bytes_sent_total",
            "Stored bytes sent to storage elements",
            ["node"],
            registry=r,
        )
        self.duration = Histogram(
            "ingester_upload_duration_seconds",
            "Upload duration, first byte to answer",
            ["outcome"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
        )
        self.in_flight = Gauge(
            "ingester_uploads_in_flight",
            "Uploads being received or stored",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.draining = Gauge(
            "ingester_draining",
            "1 from a SIGTERM until exit: readiness is false, new uploads are refused",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.compression_ratio = Histogram(
            "ingester_compression_ratio",
            "Original size / stored size per upload",
            ["codec"],
            registry=r,
            buckets=(1, 1.1, 1.5, 2, 3, 5, 10, 20, 50, 100),
        )
        self.node_healthy = Gauge(
            "ingester_node_healthy",
            "1 when the storage element answered its last check",
            ["node"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.circuit_state = Gauge(
            "ingester_node_circuit_state",
            "Circuit breaker per node: 0 closed, 1 half-open, 2 open",
            ["node"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.writable_nodes = Gauge(
            "ingester_writable_nodes",
            "Writable storage elements, not draining, that answered a health check recently"
            " (0: uploads are refused with 503; /health/ready is 503)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.registrations = Counter(
            "ingester_registrations_total",
            "Stored files by what artStore's registry step did: registered, pending (queued"
            " in the outbox), not_configured (no Admin Module), refused, unavailable",
            ["outcome"],
            registry=r,
        )
        self.registry_stale = Gauge(
            "ingester_registry_stale",
            "1 while the node view could not be refreshed (uploads use the last view)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.outbox_jobs = Gauge(
            "ingester_outbox_jobs",
            "Durable work not done yet, by kind (compensation, registration, announcement),"
            " in Redis and this process's journal",
            ["kind"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.outbox_oldest = Gauge(
            "ingester_outbox_oldest_seconds",
            "Age of the oldest job of each kind not done yet",
            ["kind"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.compensation_failures = Counter(
            "ingester_compensation_failures_total",
            "Attempts to remove a stored file that did not remove it, by node and reason"
            " (forbidden: the SE refused the credential; failed: anything else)",
            ["node", "reason"],
            registry=r,
        )

        self.edge_refusals = Counter(
            "ingester_edge_rejections_total",
            "Connections the edge refused or closed before a route, by reason"
            " (header_too_large, too_many_headers, request_line_too_long, header_timeout,"
            " repeated_header, transfer_coding, malformed_request, connection_limit,"
            " client_connection_limit, idle_timeout)",
            ["reason"],
            registry=r,
        )
        self.edge_connections = Gauge(
            "ingester_edge_connections",
            "Open client connections (counted under INGESTER_MAX_CONNECTIONS)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.fair_use_refusals = Counter(
            "ingester_fair_use_refusals_total",
            "Uploads refused with 429 by fair use, by the limit the user was over"
            " (concurrent_uploads, requests, bytes)",
            ["limit"],
            registry=r,
        )
        self.fair_use_paced = Counter(
            "ingester_fair_use_paced_seconds_total",
            "Time uploads' reading was held back to keep users within their byte quota",
            registry=r,
        )
        self.fair_use_redis_errors = Counter(
            "ingester_fair_use_redis_errors_total",
            "Fair-use calls Redis did not answer (the instance then decides alone for a while)",
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: label values here come from small
        sets (outcomes, statuses, nodes, codecs), and `labels()` validates and locks."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        """The exposition text; with several workers, all of theirs summed up."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            ProcessCollector(registry=registry)  # the process metrics of this worker
            return generate_latest(registry)
        return generate_latest(self.registry)


class EdgeMetrics:
    """The edge's reports (runtime/edge.py's `EdgeObserver`) as metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._open = metrics.edge_connections

    def refused(self, reason: str) -> None:
        self._metrics.child(self._metrics.edge_refusals, reason).inc()

    def opened(self) -> None:
        self._open.inc()

    def closed(self) -> None:
        self._open.dec()


def failure_fields(exc: BaseException) -> dict[str, object]:
    """An unexpected exception for a log line: its type and where it was raised, frame by
    frame, but not its message: that may quote request bytes (a UnicodeDecodeError holds
    the bytes it could not decode)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return {
        "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "frames": [f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-12:]],
    }


_log_json = msgspec.json.Encoder(enc_hook=str)


def _render_json(logger: object, method: str, event_dict: structlog.typing.EventDict) -> bytes:
    return _log_json.encode(event_dict)


def configure_logging(level: str = "info", fmt: str = "json", access_log: bool = False) -> None:
    """Our own lines go straight from structlog to stdout (a line per upload is on the
    hot path: no stdlib logging in between); uvicorn's and libraries' lines go through
    stdlib logging with the same fields and format."""
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    chain: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]
    factory: structlog.types.WrappedLogger
    if fmt == "json":
        final: structlog.types.Processor = _render_json
        stdlib_final: structlog.types.Processor = structlog.processors.JSONRenderer()
        # Tracebacks as data, without frame locals: a local may hold a token.
        chain.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        final = stdlib_final = structlog.dev.ConsoleRenderer(colors=False)
        factory = structlog.WriteLoggerFactory(sys.stdout)
    structlog.configure(
        processors=[*chain, final],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, stdlib_final],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = name != "uvicorn.access" or access_log


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(logger=name)
    return logger
