"""Tracing, opt-in: OpenTelemetry spans for an upload and its saga steps.

The code that does the work asks a `Tracing` for spans around steps (never around a
body piece) and for the headers that carry the trace to a Storage Element or the
Admin Module. Off (the default), that is `NO_TRACING`: every call returns at once, a
shared do-nothing span, and OpenTelemetry is not even imported. On, it is
`otel.OtelTracing`, built from the standard `OTEL_*` variables.

On when `INGESTER_OTEL_ENABLED=true` or `OTEL_TRACES_EXPORTER` names an exporter; off
whatever else is set when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Literal, Protocol

AttributeValue = str | int | float | bool
Attributes = Mapping[str, AttributeValue]
SpanKind = Literal["internal", "server", "client"]


class StepSpan(Protocol):
    """A step's span as the code that does the step sees it."""

    def set(self, key: str, value: AttributeValue) -> None: ...

    def fail(self, message: str) -> None:
        """The step failed (the span's status: error, with `message`)."""
        ...


class Tracing(Protocol):
    enabled: bool

    def span(
        self, name: str, attributes: Attributes | None = None, kind: SpanKind = "internal"
    ) -> AbstractContextManager[StepSpan]:
        """A child of the current span (or a root), current inside the `with`."""
        ...

    def incoming(
        self,
        name: str,
        traceparent: bytes | None,
        tracestate: bytes | None,
        attributes: Attributes | None = None,
    ) -> AbstractContextManager[StepSpan]:
        """A server span continuing the caller's trace when its `traceparent` says so."""
        ...

    def annotate(self, attributes: Attributes) -> None:
        """Set attributes on the current span: a step too small to be a span of its own
        (the plan, a node's selection) is told on the upload's."""
        ...

    def inject(self, headers: dict[str, str]) -> None:
        """Add the current trace's headers (`traceparent`, ...) to an outgoing request."""
        ...

    def shutdown(self) -> None:
        """Export what is left; the process is stopping."""
        ...


class _NoSpan:
    __slots__ = ()

    def set(self, key: str, value: AttributeValue) -> None:
        return None

    def fail(self, message: str) -> None:
        return None


class _NoSpanContext:
    """One shared, reusable `with` target: entering it allocates nothing."""

    __slots__ = ()

    def __enter__(self) -> StepSpan:
        return _NO_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()
# A span that records nothing: what every step gets when tracing is off.
NO_SPAN: AbstractContextManager[StepSpan] = _NoSpanContext()


class NoTracing:
    """Tracing off: every call a constant-time no-op."""

    enabled = False

    def span(
        self, name: str, attributes: Attributes | None = None, kind: SpanKind = "internal"
    ) -> AbstractContextManager[StepSpan]:
        return NO_SPAN

    def incoming(
        self,
        name: str,
        traceparent: bytes | None,
        tracestate: bytes | None,
        attributes: Attributes | None = None,
    ) -> AbstractContextManager[StepSpan]:
        return NO_SPAN

    def annotate(self, attributes: Attributes) -> None:
        return None

    def inject(self, headers: dict[str, str]) -> None:
        return None

    def shutdown(self) -> None:
        return None


NO_TRACING: Tracing = NoTracing()

ENABLED_VARIABLE = "INGESTER_OTEL_ENABLED"


def wanted(environ: Mapping[str, str], enabled: bool) -> bool:
    """Is tracing asked for: `enabled` (INGESTER_OTEL_ENABLED) or an exporter named in
    OTEL_TRACES_EXPORTER; OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none win."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return enabled or bool(exporters)


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this installation cannot do."""


def tracing_from_environment(environ: Mapping[str, str], enabled: bool) -> Tracing:
    """`NO_TRACING`, or OpenTelemetry set up from the `OTEL_*` variables (imported only
    then: the `otel` extra, `pip install 'ingester-gateway[otel]'`)."""
    if not wanted(environ, enabled):
        return NO_TRACING
    with _opentelemetry_installed():
        from ingester_gateway.tracing.otel import OtelTracing
    return OtelTracing.from_environment(environ)


def check_environment(environ: Mapping[str, str], enabled: bool) -> None:
    """At start: raise TracingConfigError when tracing is asked for and cannot be had."""
    if wanted(environ, enabled):
        with _opentelemetry_installed():
            from ingester_gateway.tracing.otel import check_environment as check_otel
        check_otel(environ)


@contextmanager
def _opentelemetry_installed() -> Iterator[None]:
    try:
        yield
    except ImportError as exc:
        raise TracingConfigError(
            f"tracing is on but OpenTelemetry is not installed ({exc.name}):"
            " pip install 'ingester-gateway[otel]'"
        ) from None
