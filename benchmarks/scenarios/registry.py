"""Registry: the pass-through of `passthrough.py` (c) on a gateway that takes its nodes
from a real redis-server (`INGESTER_REGISTRY=redis`, the SE added as an operator
record), with its watcher, breakers, events and backlog running (cr). Issue 4's figure:
what the distributed half costs an upload.
"""

from __future__ import annotations

from benchmarks.curl import gateway_upload
from benchmarks.datasets import Datasets
from benchmarks.scenario import Bench, Measurement, Scenario


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
