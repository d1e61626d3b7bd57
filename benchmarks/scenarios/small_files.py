"""Small files: 4 KiB multipart uploads from 64 concurrent wrk connections, one JWT each
(rotated), to the gateway with 1 worker (s1) and 2 workers (s2), to the FastAPI
baseline built like the first artStore ingester (sb) and through nginx straight to the
SE (sn). Figures 4: CPU per 1 000 stored uploads, latency and requests/s against the
baseline and nginx, and every response a 201.

s1 and s2 use gateway instances of their own (`gateway-w1`, `gateway-w2`): 64
concurrent uploads must not grow `gateway`'s peak RSS. The client is `wrk.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.scenario import Bench, Measurement, Scenario
from benchmarks.wrk import run_wrk


def _wrk_against(key: str, server: str) -> Callable[[Bench], Measurement]:
    def run(bench: Bench) -> Measurement:
        url = f"{bench.stack.server(server).url}/api/v1/files/upload"
        return run_wrk(bench, key, server, url)

    return run


SCENARIOS = tuple(
    Scenario(
        key,
        f"4 KiB x 64 clients -> {title}",
        _wrk_against(key, server),
        servers=("se", server),
        rounds="once",
        uses_payload=False,
        table="small",
    )
    for key, title, server in (
        ("s1", "gateway, 1 worker", "gateway-w1"),
        ("s2", "gateway, 2 workers", "gateway-w2"),
        ("sb", "FastAPI baseline", "baseline"),
        ("sn", "nginx -> SE", "nginx"),
    )
)
