"""Small files: 4 KiB multipart uploads from 64 concurrent wrk connections, one JWT each
(rotated), to the gateway with 1 worker (s1) and 2 workers (s2), to the FastAPI
baseline built like the first artStore ingester (sb) and through nginx straight to the
SE (sn). Figures 4: CPU per 1 000 stored uploads, latency and requests/s against the
baseline and nginx, and every response a 201. sf and sf0: a gateway with Redis with
fair use on (every limit, none reached) and off, for what fair use costs (issue 10).

s1 and s2 use gateway instances of their own (`gateway-w1`, `gateway-w2`): 64
concurrent uploads must not grow `gateway`'s peak RSS. The client is `wrk.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.figure import Figure, Reading
from benchmarks.scenario import Bench, Measurement, Scenario
from benchmarks.summary import Summaries
from benchmarks.wrk import run_wrk


def _wrk_against(key: str, server: str) -> Callable[[Bench], Measurement]:
    def run(bench: Bench) -> Measurement:
        url = f"{bench.stack.server(server).url}/api/v1/files/upload"
        return run_wrk(bench, key, server, url)

    return run


# What a gateway instance needs besides the SE.
EXTRA_SERVERS = {
    "gateway-reg": ("admin",),
    "gateway-fair": ("redis",),
    "gateway-fair-off": ("redis",),
}

SCENARIOS = tuple(
    Scenario(
        key,
        f"4 KiB x 64 clients -> {title}",
        _wrk_against(key, server),
        servers=("se", *EXTRA_SERVERS.get(server, ()), server),
        rounds="once",
        uses_payload=False,
        table="small",
    )
    for key, title, server in (
        ("s1", "gateway, 1 worker", "gateway-w1"),
        ("s2", "gateway, 2 workers", "gateway-w2"),
        ("sr", "gateway, 1 worker, registering in the Admin Module", "gateway-reg"),
        ("sb", "FastAPI baseline", "baseline"),
        ("sn", "nginx -> SE", "nginx"),
        ("sf0", "gateway, 1 worker, Redis, fair use off", "gateway-fair-off"),
        ("sf", "gateway, 1 worker, Redis, fair use on (every limit)", "gateway-fair"),
    )
)


# -- figures ---------------------------------------------------------------------------

# metric -> (Measurement.extra field, row text, unit, chart label or None)
METRICS = {
    "cpu_per_1000": ("server_cpu_per_1000_s", "CPU-s per 1000", "s", "4 KiB CPU per 1000"),
    "p99": ("p99_ms", "p99 latency", "ms", "4 KiB p99"),
    "p50": ("p50_ms", "p50 latency", "ms", None),
    "requests_per_s": ("requests_per_s", "requests/s", "req/s", None),
}
# what the gateway is compared with: scenario key -> (name, row text)
REFERENCES = {
    "sb": ("baseline", "baseline (sb)"),
    "sn": ("nginx", "nginx -> SE (sn)"),
    "s1": ("unregistered", "the same without registration (s1)"),
    "sf0": ("fair_use_off", "the same with fair use off (sf0)"),
}


def _versus(metric: str, gateway_key: str, workers: str, reference_key: str) -> Figure:
    field, text, unit, chart_label = METRICS[metric]
    name, reference_text = REFERENCES[reference_key]

    def compute(s: Summaries) -> Reading:
        return Reading(
            f"4. 4 KiB uploads, {text}: gateway {workers} ({gateway_key}) / {reference_text}",
            s[gateway_key].extra(field),
            s[reference_key].extra(field),
            unit,
            chart=None if chart_label is None else f"{chart_label}\ngateway {workers} / {name}",
        )

    return Figure(
        f"small_files.{metric}.{gateway_key}_vs_{name}", (gateway_key, reference_key), compute
    )


def non_201(s: Summaries) -> Reading | None:
    """Every response of every small-file run a 201 (socket errors shown beside it)."""
    ran = [s[declared.key] for declared in SCENARIOS if declared.key in s]
    if not ran:
        return None
    bad = sum(m.extra["non_201"] for x in ran for m in x.runs)
    errors = sum(sum(m.extra["socket_errors"].values()) for x in ran for m in x.runs)
    return Reading(
        f"4. non-201 responses (and socket errors: {errors}),"
        f" all 4 KiB runs ({','.join(x.key for x in ran)})",
        float(bad),
        None,
        "",
        kind="absolute",
    )


FIGURES = (
    *(
        _versus(metric, gateway_key, workers, reference_key)
        for gateway_key, workers in (("s1", "1 worker"), ("s2", "2 workers"))
        for metric, reference_key in (
            ("cpu_per_1000", "sb"),
            ("p99", "sb"),
            ("p50", "sb"),
            ("requests_per_s", "sb"),
            ("requests_per_s", "sn"),
        )
    ),
    # Issue 8: what registering every upload in the Admin Module costs.
    *(_versus(metric, "sr", "1 worker, registering", "s1") for metric in ("cpu_per_1000", "p99")),
    # Issue 10: what fair use through Redis costs (concurrent uploads, request rate and
    # byte quota all on, none reached).
    *(_versus(metric, "sf", "1 worker, fair use on", "sf0") for metric in ("cpu_per_1000", "p99")),
    Figure("small_files.non_201", (), non_201),
)
