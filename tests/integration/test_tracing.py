"""Tracing on, end to end: a real gateway exports OTLP/HTTP to a collector in the test
(decoded with opentelemetry-proto); the reference SE and Admin Module record the
`traceparent` they were sent."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ingester_gateway.reference.processes import (
    ServerProcess,
    admin_module,
    free_port,
    gateway,
    running,
    service_account_env,
    storage_element,
)
from tests.faults import StorageElementProxy, se_upload_reply, wrong_checksum
from tests.kit import DevKeys, eventually, http_call, log_events, put
from tests.stack import se_get, start_artstore

MiB = 2**20
INCOMING_TRACE = "0af7651916cd43dd8448eb211c80319c"
INCOMING_SPAN = "b7ad6b7169203331"


@dataclass(frozen=True)
class Exported:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    status: int
    attributes: dict[str, Any]
    service: str


class Collector:
    """An OTLP/HTTP trace receiver on loopback (POST /v1/traces, protobuf)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[Exported] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/v1/traces", self.path
                collector.receive(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def receive(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    exported = Exported(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        status=span.status.code,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        service=str(resource.get("service.name")),
                    )
                    with self.lock:
                        self.spans.append(exported)

    def trace(self, trace_id: str) -> list[Exported]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


@dataclass
class Traced:
    gw: ServerProcess
    se: ServerProcess
    admin: ServerProcess
    proxy: StorageElementProxy
    collector: Collector
    keys: DevKeys


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Traced]:
    """An SE behind a recording proxy, the reference Admin Module, and a gateway with
    tracing on (the standard OTEL_* variables) exporting to the test's collector."""
    workdir = tmp_path_factory.mktemp("traced")
    se = storage_element(workdir, keys.public_path)
    admin = admin_module(workdir, keys.private_path)
    with (
        Collector() as collector,
        running(se, admin),
        StorageElementProxy(se.url) as proxy,
    ):
        env = {
            **service_account_env(admin),
            "INGESTER_ADMIN_URL": admin.url,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        entry = {"id": se.name, "url": proxy.url, "mode": "rw"}
        gw = gateway(workdir, keys.public_path, [entry], env=env)
        with running(gw):
            yield Traced(gw, se, admin, proxy, collector, keys)


def _incoming(span_id: str = INCOMING_SPAN, trace_id: str = INCOMING_TRACE) -> str:
    return f"00-{trace_id}-{span_id}-01"


def _one(spans: list[Exported], name: str) -> Exported:
    (found,) = [s for s in spans if s.name == name]
    return found


def _parent_in(traceparent: str | None) -> tuple[str, str]:
    """(trace id, span id) of a sampled W3C traceparent header."""
    assert traceparent is not None
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1, traceparent  # sampled
    return trace_id, span_id


def _ids(span: Exported) -> tuple[str, str]:
    return span.trace_id, span.span_id


def _wait_for(collector: Collector, trace_id: str, names: set[str]) -> list[Exported]:
    def complete() -> list[Exported] | None:
        spans = collector.trace(trace_id)
        return spans if names <= {s.name for s in spans} else None

    return eventually(complete, 15, f"spans {sorted(names)}")


def test_a_streamed_upload_is_one_span_tree_under_the_callers_trace(traced: Traced) -> None:
    data = [os.urandom(MiB) for _ in range(6)]  # chunked: streamed block by block
    answer = put(
        traced.gw,
        traced.keys.auth(),
        iter(data),
        "traced.bin",
        headers={"traceparent": _incoming()},
    )
    assert answer.status == 201, answer.body
    result = answer.json()
    steps = {"upload.attempt", "upload.register"}
    spans = _wait_for(traced.collector, INCOMING_TRACE, {"upload", *steps})
    # one span per step, none per block or body piece
    assert sorted(s.name for s in spans) == sorted({"upload", *steps})
    upload = _one(spans, "upload")
    assert upload.parent_id == INCOMING_SPAN
    assert upload.kind == Span.SPAN_KIND_SERVER
    assert upload.service == "gateway-under-test"
    assert upload.attributes["http.response.status_code"] == 201
    assert upload.attributes["ingester.file_id"] == result["file_id"]
    assert upload.attributes["ingester.upload_id"] == result["upload_id"]
    for name in steps:
        assert _one(spans, name).parent_id == upload.span_id, name
    attempt, register = _one(spans, "upload.attempt"), _one(spans, "upload.register")
    assert attempt.kind == register.kind == Span.SPAN_KIND_CLIENT
    assert attempt.attributes["ingester.node"] == traced.se.name
    # The plan is told on the upload's span, not a span of its own.
    assert upload.attributes["ingester.whole"] is False
    assert upload.attributes["ingester.codec"] in ("none", "zstd")

    # The SE saw the attempt's span as the parent of its work ...
    stored = json.loads(se_get(traced.se, traced.keys, f"/api/v1/files/{result['file_id']}"))
    assert _parent_in(stored["traceparent"]) == _ids(attempt)
    # ... and the Admin Module the registration's.
    registered = eventually(
        lambda: [
            e
            for e in log_events(traced.admin, "file_registered")
            if e["file_id"] == result["file_id"]
        ],
        10,
        "the Admin Module's log line",
    )
    assert _parent_in(registered[0]["traceparent"]) == _ids(register)


def test_a_compensated_upload_shows_the_delete_as_a_span_and_carries_it_to_the_se(
    traced: Traced,
) -> None:
    trace_id = "5b8efff798038103d269b633813fc60c"
    traced.proxy.rewrite = se_upload_reply(wrong_checksum)
    try:
        answer = put(
            traced.gw,
            traced.keys.auth(),
            b"bytes the SE will misreport\n" * 100,
            "mismatch.txt",
            headers={"traceparent": _incoming(trace_id=trace_id)},
        )
    finally:
        traced.proxy.rewrite = None
    assert answer.status == 502, answer.body
    names = {"upload", "upload.attempt", "upload.compensate"}
    spans = _wait_for(traced.collector, trace_id, names)
    assert sorted(s.name for s in spans) == sorted(names)
    upload = _one(spans, "upload")
    assert all(s.parent_id == upload.span_id for s in spans if s is not upload)
    assert upload.status == Status.STATUS_CODE_ERROR
    assert upload.attributes["http.response.status_code"] == 502
    compensate = _one(spans, "upload.compensate")
    assert compensate.attributes["ingester.reason"] == "checksum_mismatch"
    assert compensate.attributes["ingester.outcome"] == "deleted"
    (delete,) = [
        r for r in traced.proxy.deletes() if compensate.attributes["ingester.file_id"] in r.path
    ]
    assert _parent_in(delete.traceparent) == _ids(compensate)


def test_an_upload_without_a_traceparent_starts_its_own_trace(traced: Traced) -> None:
    answer = put(traced.gw, traced.keys.auth(), b"no caller trace\n" * 50, "untraced.txt")
    assert answer.status == 201, answer.body
    upload_id = answer.json()["upload_id"]

    def root() -> Exported | None:
        with traced.collector.lock:
            return next(
                (
                    s
                    for s in traced.collector.spans
                    if s.name == "upload" and s.attributes.get("ingester.upload_id") == upload_id
                ),
                None,
            )

    upload = eventually(root, 15, "the upload's span")
    assert upload.parent_id == "" and upload.trace_id != INCOMING_TRACE


def test_a_finalize_is_one_trace_of_its_steps_and_its_requests_carry_it(
    tmp_path: Path, keys: DevKeys
) -> None:
    """A temporary file finalized: the outbox job's span holds the copy (the upload
    core's node selection and attempt under it), the verification and the commit; the
    rw SE gets the attempt's traceparent, the Admin Module's update the commit's."""
    with (
        Collector() as collector,
        start_artstore(tmp_path, keys) as artstore,
        running(
            artstore.gateway(
                "traced-finalize",
                {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_TRACES_EXPORTER": "otlp"},
            )
        ) as (gw,),
    ):
        stored = put(
            gw, keys.auth(), b"finalize me\n" * 1000, "f.txt", "retention_policy=temporary"
        )
        assert stored.status == 201, stored.body
        file_id = stored.json()["file_id"]
        started = http_call(gw, "POST", f"/api/v1/finalize/{file_id}", b"", keys.auth())
        assert started.status == 202, started.body
        transaction_id = started.json()["transaction_id"]

        def job_span() -> Exported | None:
            with collector.lock:
                return next(
                    (
                        s
                        for s in collector.spans
                        if s.name == "outbox.finalize"
                        and s.attributes.get("ingester.job_id") == transaction_id
                    ),
                    None,
                )

        job = eventually(job_span, 30, "the finalize job's span")
        assert job.attributes["ingester.done"] is True
        spans = _wait_for(collector, job.trace_id, {"finalize.commit"})
        children = {s.name: s for s in spans if s.parent_id == job.span_id}
        assert sorted(children) == ["finalize.commit", "finalize.copy", "finalize.verify"]
        copy = children["finalize.copy"]
        assert copy.attributes["ingester.node"] == artstore.se.name
        under_copy = [s for s in spans if s.parent_id == copy.span_id]
        assert sorted(s.name for s in under_copy) == ["upload.attempt"]
        attempt = _one(under_copy, "upload.attempt")
        assert children["finalize.verify"].attributes["ingester.checksum_verified"] is True

        copied = json.loads(se_get(artstore.se, keys, f"/api/v1/files/{file_id}"))
        assert _parent_in(copied["traceparent"]) == _ids(attempt)
        updated = eventually(
            lambda: [
                e for e in log_events(artstore.admin, "file_updated") if e["file_id"] == file_id
            ],
            10,
            "the Admin Module's update line",
        )
        assert _parent_in(updated[0]["traceparent"]) == _ids(children["finalize.commit"])
