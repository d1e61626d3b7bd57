"""Tracing on: the OpenTelemetry SDK, configured by the standard `OTEL_*` variables.

Imported only when tracing is on (the `otel` extra). What this module decides:

- exporters from `OTEL_TRACES_EXPORTER` (comma list, default `otlp`): `otlp` over
  `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` `http/protobuf` (default) or `grpc` (needs
  opentelemetry-exporter-otlp-proto-grpc), `console` (one JSON document per span on
  stderr; stdout carries the logs); each behind a `BatchSpanProcessor`, so encoding and
  sending happen in the SDK's worker thread, off the event loop;
- the resource: `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, else
  `service.name=ingester-gateway`.

The SDK itself reads the rest: the exporter's endpoint, headers, timeout and
compression (`OTEL_EXPORTER_OTLP_*`), the sampler (`OTEL_TRACES_SAMPLER`, `_ARG`;
default parent-based always-on), the batch processor (`OTEL_BSP_*`) and the
propagators (`OTEL_PROPAGATORS`, default W3C `traceparent` + baggage).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from importlib import metadata

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Status, StatusCode

from ingester_gateway.tracing import (
    NO_SPAN,
    Attributes,
    AttributeValue,
    SpanKind,
    StepSpan,
    TracingConfigError,
)

SERVICE = "ingester-gateway"
_KINDS = {
    "internal": trace.SpanKind.INTERNAL,
    "server": trace.SpanKind.SERVER,
    "client": trace.SpanKind.CLIENT,
}


class _Span:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def fail(self, message: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, message))


class OtelTracing:
    enabled = True

    def __init__(self, processors: list[SpanProcessor], resource: Resource | None = None) -> None:
        self._provider = TracerProvider(resource=resource or service_resource())
        for processor in processors:
            self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("ingester_gateway", _version())

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> OtelTracing:
        return cls([BatchSpanProcessor(exporter) for exporter in span_exporters(environ)])

    def span(
        self, name: str, attributes: Attributes | None = None, kind: SpanKind = "internal"
    ) -> AbstractContextManager[StepSpan]:
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid and not parent.trace_flags.sampled:
            # The upload is not sampled: its steps would be dropped (a parent-based
            # sampler, or a ratio on the same trace id, decides as for the parent), and
            # making them costs ~20 us each. Requests still carry the parent's context.
            return NO_SPAN
        return self._span(name, attributes, kind, None)

    def incoming(
        self,
        name: str,
        traceparent: bytes | None,
        tracestate: bytes | None,
        attributes: Attributes | None = None,
    ) -> AbstractContextManager[StepSpan]:
        parent: Context | None = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
            parent = propagate.extract(carrier)
        return self._span(name, attributes, "server", parent)

    @contextmanager
    def _span(
        self,
        name: str,
        attributes: Attributes | None,
        kind: SpanKind,
        parent: Context | None,
    ) -> Iterator[StepSpan]:
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=_KINDS[kind],
            attributes=attributes,
        ) as span:
            yield _Span(span)

    def annotate(self, attributes: Attributes) -> None:
        trace.get_current_span().set_attributes(attributes)

    def inject(self, headers: dict[str, str]) -> None:
        propagate.inject(headers)

    def shutdown(self) -> None:
        self._provider.shutdown()


def service_resource() -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named
    `ingester-gateway` unless those name it."""
    resource = Resource.create({SERVICE_VERSION: _version()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    return resource


def check_environment(environ: Mapping[str, str]) -> None:
    """Raise TracingConfigError for exporters or protocols that cannot be had here."""
    for name in _exporter_names(environ):
        if name == "otlp" and _otlp_protocol(environ) == "grpc":
            _grpc_exporter_class()


def span_exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _exporter_names(environ):
        if name == "console":
            exporters.append(ConsoleSpanExporter(service_name=SERVICE, out=sys.stderr))
        elif _otlp_protocol(environ) == "grpc":
            exporters.append(_grpc_exporter_class()())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
    return exporters


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    chosen = [n for n in names if n] or ["otlp"]
    for name in chosen:
        if name not in ("otlp", "console"):
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)"
            )
    return chosen


def _otlp_protocol(environ: Mapping[str, str]) -> str:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in ("http/protobuf", "grpc"):
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)"
        )
    return protocol


def _grpc_exporter_class() -> type[SpanExporter]:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter as GrpcSpanExporter,
        )
    except ImportError:
        raise TracingConfigError(
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc"
            " (or use http/protobuf)"
        ) from None
    exporter: type[SpanExporter] = GrpcSpanExporter
    return exporter


def _version() -> str:
    try:
        return metadata.version("ingester-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"
