"""Registry: the pass-through of `passthrough.py` (c) on a gateway that takes its nodes
from a real redis-server (`INGESTER_REGISTRY=redis`, the SE added as an operator
record), with its watcher, breakers, events and backlog running (cr). Issue 4's figure:
what the distributed half costs an upload.
"""

from __future__ import annotations

from benchmarks.curl import gateway_upload
from benchmarks.datasets import Datasets
from benchmarks.figure import Figure, Reading
from benchmarks.scenario import Bench, Measurement, Scenario
from benchmarks.summary import Summaries, human_size


def run_redis_registry(bench: Bench) -> Measurement:
    return gateway_upload(bench, "cr", bench.data.random(), "none", "gateway-redis")


SCENARIOS = (
    Scenario(
        "cr",
        "gateway, nodes from Redis, breakers on -> SE, compression none (raw PUT)",
        run_redis_registry,
        Datasets.random,
        ("se", "redis", "gateway-redis"),
    ),
)


def redis_vs_static(s: Summaries) -> Reading:
    cr, c = s["cr"], s["c"]
    return Reading(
        f"issue 4. pass-through {human_size(cr.payload_bytes)}, MB/s: nodes from Redis,"
        " breakers on (cr) / static registry (c)",
        cr.mb_s,
        c.mb_s,
        "MB/s",
        chart="Redis registry /\nstatic, MB/s",
    )


FIGURES = (Figure("registry.mb_s.redis_vs_static", ("cr", "c"), redis_vs_static),)
