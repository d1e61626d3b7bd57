"""Tracing: when it is on, what it costs when off (nothing imported), the start-up
errors, and the OpenTelemetry side (spans, parents, the headers it propagates)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ingester_gateway.config import ConfigError, load_settings
from ingester_gateway.tracing import NO_TRACING, tracing_from_environment, wanted
from ingester_gateway.tracing.otel import OtelTracing

SETTINGS = {
    "INGESTER_AUTH_JWKS_URL": "http://admin/jwks.json",
    "INGESTER_STORAGE_ELEMENTS": '[{"id": "se-1", "url": "http://se-1"}]',
}
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("environ", "enabled", "on"),
    [
        ({}, False, False),
        ({}, True, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, False, True),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, False, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, True, False),
        ({"OTEL_SDK_DISABLED": "true"}, True, False),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, False, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False, False),
    ],
)
def test_tracing_is_on_only_when_asked_for(
    environ: dict[str, str], enabled: bool, on: bool
) -> None:
    assert wanted(environ, enabled) is on


def test_off_is_the_shared_no_op_whose_spans_and_headers_do_nothing() -> None:
    tracing = tracing_from_environment({}, enabled=False)
    assert tracing is NO_TRACING and not tracing.enabled
    headers = {"Authorization": "Bearer x"}
    with tracing.span("upload.plan", {"a": 1}) as span, tracing.incoming("upload", b"00-x", None):
        span.set("ingester.codec", "zstd")
        span.fail("nothing happens")
        tracing.inject(headers)
    assert headers == {"Authorization": "Bearer x"}
    assert tracing.span("a") is tracing.span("b")  # nothing is made per call


def test_a_gateway_with_tracing_off_loads_no_tracing_machinery() -> None:
    """The whole app imported, tracing built and used as the hot path uses it: neither
    the tracing SDK, nor an exporter, nor the propagators are loaded. (redis-py 8 loads
    OpenTelemetry's metrics SDK by itself whenever it is installed: ~1.5 MiB, not ours.)"""
    probe = (
        "import sys\n"
        "import ingester_gateway.app, ingester_gateway.cli.main\n"
        "from ingester_gateway.tracing import tracing_from_environment, check_environment\n"
        "check_environment({}, False)\n"
        "t = tracing_from_environment({}, False)\n"
        "with t.span('upload.attempt'): t.inject({})\n"
        "print(sorted(m for m in sys.modules if m.startswith(("
        "'ingester_gateway.tracing.otel', 'opentelemetry.sdk.trace', 'opentelemetry.propagate',"
        " 'opentelemetry.exporter'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
    on = probe.replace("({}, False)", "({'OTEL_TRACES_EXPORTER': 'console'}, False)")
    loaded = subprocess.run(
        [sys.executable, "-c", on], capture_output=True, text=True, timeout=60, check=True
    )
    assert "ingester_gateway.tracing.otel" in loaded.stdout  # the probe sees an import


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json'"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc", "opentelemetry-exporter-otlp-proto-grpc"),
    ],
)
def test_tracing_that_cannot_be_had_stops_start_up_with_one_line(
    variable: str, value: str, words: str
) -> None:
    environ = {**SETTINGS, "INGESTER_OTEL_ENABLED": "true", variable: value}
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_tracing_settings_that_can_be_had_start() -> None:
    settings = load_settings(
        {**SETTINGS, "INGESTER_OTEL_ENABLED": "true", "OTEL_TRACES_EXPORTER": "otlp,console"}
    )
    assert settings.otel_enabled


@pytest.fixture
def recorded() -> tuple[OtelTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return OtelTracing([SimpleSpanProcessor(exporter)]), exporter


def test_a_server_span_continues_the_callers_trace_and_hands_it_on(
    recorded: tuple[OtelTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = recorded
    incoming = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01".encode()
    headers: dict[str, str] = {}
    with (
        tracing.incoming("upload", incoming, b"vendor=1", {"http.route": "/x"}),
        tracing.span("upload.attempt", kind="client"),
    ):
        tracing.inject(headers)
    attempt, upload = exporter.get_finished_spans()
    assert (upload.name, upload.kind) == ("upload", SpanKind.SERVER)
    assert format(upload.context.trace_id, "032x") == INCOMING_TRACE
    assert upload.parent is not None and format(upload.parent.span_id, "016x") == INCOMING_SPAN
    assert upload.attributes is not None and upload.attributes["http.route"] == "/x"
    assert attempt.parent is not None and attempt.parent.span_id == upload.context.span_id
    assert attempt.kind == SpanKind.CLIENT
    span_id = format(attempt.context.span_id, "016x")
    assert headers["traceparent"] == f"00-{INCOMING_TRACE}-{span_id}-01"
    assert headers["tracestate"] == "vendor=1"


def test_without_a_traceparent_the_upload_is_a_new_trace(
    recorded: tuple[OtelTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = recorded
    with tracing.incoming("upload", None, None):
        pass
    with tracing.incoming("upload", b"not a traceparent", None):
        pass
    first, second = exporter.get_finished_spans()
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


def test_a_failed_step_and_an_exception_mark_the_span_as_an_error(
    recorded: tuple[OtelTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = recorded
    with tracing.span("upload.compensate") as span:
        span.set("ingester.outcome", "forbidden")
        span.fail("the delete forbidden")
    with pytest.raises(RuntimeError), tracing.span("upload.attempt"):
        raise RuntimeError("the SE went away")
    failed, raised = exporter.get_finished_spans()
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "the delete forbidden"
    assert failed.attributes is not None and failed.attributes["ingester.outcome"] == "forbidden"
    assert raised.status.status_code == StatusCode.ERROR
    assert [event.name for event in raised.events] == ["exception"]


def test_the_service_is_named_unless_otel_service_name_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ingester_gateway.tracing.otel import service_resource

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert service_resource().attributes["service.name"] == "ingester-gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-eu-1")
    assert service_resource().attributes["service.name"] == "gw-eu-1"


def test_the_steps_of_an_unsampled_upload_make_no_spans_and_pass_the_decision_on(
    recorded: tuple[OtelTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = recorded
    unsampled = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-00".encode()
    headers: dict[str, str] = {}
    with (
        tracing.incoming("upload", unsampled, None),
        tracing.span("upload.attempt", kind="client") as step,
    ):
        step.set("ingester.node", "se-1")
        tracing.inject(headers)
    assert exporter.get_finished_spans() == ()
    trace_id, _, flags = headers["traceparent"].split("-")[1:]
    assert (trace_id, flags) == (INCOMING_TRACE, "00")
