"""Tracing (issue 11): what OpenTelemetry spans cost the gateway when every upload is
traced, against the same work untraced.

- ct: the pass-through of `passthrough.py` (c: 1 GiB random, raw PUT, compression none)
  on `gateway-otel` (OTEL_TRACES_EXPORTER=otlp, always_on sampling, OTLP/HTTP to
  `otlp_sink.py`); compared with c, in the same rotated rounds.
- so / st: the 4 KiB uploads of `small_files.py` with tracing off (`gateway-w1`) and on
  (`gateway-otel-w1`), both repeated in the same rotated rounds: a 15 % bar needs medians
  of interleaved runs, not one run each on a shared machine. st10: the same with one
  upload in ten sampled (`parentbased_traceidratio`, 0.1), reported.

Each traced run also reports the spans the sink received per upload: a span dropped by
a full queue would cost nothing, so the count must be what an upload makes (no span is
made per body piece: a 1 GiB upload has as many as a 4 KiB one).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks.curl import gateway_upload
from benchmarks.datasets import Datasets
from benchmarks.figure import Figure, Reading
from benchmarks.scenario import Bench, Measurement, Scenario
from benchmarks.summary import Summaries, human_size
from benchmarks.wrk import run_wrk

FLUSH_S = 1.0  # the gateway's batch delay is 200 ms: its last spans have left by then


def _counting_spans(
    bench: Bench, run: Callable[[], Measurement], uploads: Callable[[Measurement], int]
) -> Measurement:
    time.sleep(FLUSH_S)  # what earlier runs (the warm-up) exported has arrived
    before = bench.stack.spans_exported()
    m = run()
    time.sleep(FLUSH_S)
    m.extra["spans_per_upload"] = (bench.stack.spans_exported() - before) / max(1, uploads(m))
    return m


def run_traced_passthrough(bench: Bench) -> Measurement:
    return _counting_spans(
        bench,
        lambda: gateway_upload(bench, "ct", bench.data.random(), "none", "gateway-otel"),
        lambda m: 1,
    )


def _small_files(key: str, server: str, traced: bool) -> Callable[[Bench], Measurement]:
    def run(bench: Bench) -> Measurement:
        url = f"{bench.stack.server(server).url}/api/v1/files/upload"
        if not traced:
            return run_wrk(bench, key, server, url)
        return _counting_spans(
            bench, lambda: run_wrk(bench, key, server, url), lambda m: int(m.extra["stored"])
        )

    return run


SCENARIOS = (
    Scenario(
        "ct",
        "gateway, tracing on (OTLP, every upload) -> SE, compression none (raw PUT)",
        run_traced_passthrough,
        Datasets.random,
        ("se", "otlp-sink", "gateway-otel"),
    ),
    Scenario(
        "so",
        "4 KiB x 64 clients -> gateway, 1 worker, tracing off (rounds beside st)",
        _small_files("so", "gateway-w1", traced=False),
        servers=("se", "gateway-w1"),
        uses_payload=False,
        table="small",
    ),
    Scenario(
        "st",
        "4 KiB x 64 clients -> gateway, 1 worker, tracing on (OTLP, every upload)",
        _small_files("st", "gateway-otel-w1", traced=True),
        servers=("se", "otlp-sink", "gateway-otel-w1"),
        uses_payload=False,
        table="small",
    ),
    Scenario(
        "st10",
        "4 KiB x 64 clients -> gateway, 1 worker, tracing on, 1 upload in 10 sampled",
        _small_files("st10", "gateway-otel10-w1", traced=True),
        servers=("se", "otlp-sink", "gateway-otel10-w1"),
        uses_payload=False,
        table="small",
    ),
)


def passthrough_cpu_on_vs_off(s: Summaries) -> Reading:
    ct, c = s["ct"], s["c"]
    return Reading(
        f"issue 11. pass-through {human_size(ct.payload_bytes)}, gateway CPU-s per GiB:"
        f" tracing on (ct, {ct.extra('spans_per_upload'):g} spans) / off (c)",
        ct.cpu_per_gib("gateway"),
        c.cpu_per_gib("gateway"),
        "CPU-s/GiB",
        chart="tracing on / off,\npass-through CPU",
    )


def small_cpu_on_vs_off(s: Summaries) -> Reading:
    st, so = s["st"], s["so"]
    field = "server_cpu_per_1000_s"
    return Reading(
        "issue 11. 4 KiB uploads, gateway CPU-s per 1000: tracing on"
        f" (st, {st.extra('spans_per_upload'):.2f} spans each) / off (so)",
        st.extra(field),
        so.extra(field),
        "s",
        chart="tracing on / off,\n4 KiB CPU per 1000",
    )


def small_sampled_cpu_vs_off(s: Summaries) -> Reading:
    st10, so = s["st10"], s["so"]
    field = "server_cpu_per_1000_s"
    return Reading(
        "issue 11. 4 KiB uploads, gateway CPU-s per 1000: tracing on, 1 in 10 sampled"
        f" (st10, {st10.extra('spans_per_upload'):.2f} spans each) / off (so)",
        st10.extra(field),
        so.extra(field),
        "s",
    )


def small_p99_on_vs_off(s: Summaries) -> Reading:
    st, so = s["st"], s["so"]
    return Reading(
        "issue 11. 4 KiB uploads, p99 latency: tracing on (st) / off (so)",
        st.extra("p99_ms"),
        so.extra("p99_ms"),
        "ms",
    )


FIGURES = (
    Figure("tracing.cpu.passthrough_on_vs_off", ("ct", "c"), passthrough_cpu_on_vs_off),
    Figure("tracing.cpu_per_1000.small_on_vs_off", ("st", "so"), small_cpu_on_vs_off),
    Figure("tracing.p99.small_on_vs_off", ("st", "so"), small_p99_on_vs_off),
    Figure("tracing.cpu_per_1000.small_sampled10_vs_off", ("st10", "so"), small_sampled_cpu_vs_off),
)
