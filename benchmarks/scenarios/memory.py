"""Memory: the gateway's peak RSS (sampled every 50 ms over its process tree) during one
10 GiB upload made on the fly (big) and during 100 concurrent 100 MiB uploads (conc),
both on an instance of their own (`gateway-mem`) that nothing else has grown; and
during the 1 GiB pass-through (c) and zstd (d) uploads on `gateway`. Figures 5 and
issue 2's memory bar: a few blocks per upload, never the file.

The bytes are made on the fly (`onthefly.py`): 10 GiB would not fit on tmpfs next to
the SE's copy.
"""

from __future__ import annotations

from benchmarks.onthefly import upload_on_the_fly
from benchmarks.scenario import Bench, Measurement, Scenario


def run_big(bench: Bench) -> Measurement:
    size = min(bench.opts.big_size, 64 * 2**20) if bench.warm else bench.opts.big_size
    return upload_on_the_fly(bench, "big", size=size, gateway_role="gateway-mem")


def run_concurrent(bench: Bench) -> Measurement:
    opts = bench.opts
    if bench.warm:
        size = min(opts.concurrent_size, 8 * 2**20)
        return upload_on_the_fly(
            bench, "conc", size=size, concurrency=2, gateway_role="gateway-mem"
        )
    return upload_on_the_fly(
        bench,
        "conc",
        size=opts.concurrent_size,
        concurrency=opts.concurrent,
        gateway_role="gateway-mem",
    )


MEMORY = ("se", "gateway-mem")

SCENARIOS = (
    Scenario(
        "big",
        "one 10 GiB upload made on the fly -> gateway -> SE",
        run_big,
        servers=MEMORY,
        rounds="once",
        uses_payload=False,
        table="onthefly",
    ),
    Scenario(
        "conc",
        "100 x 100 MiB concurrent uploads made on the fly",
        run_concurrent,
        servers=MEMORY,
        rounds="once",
        uses_payload=False,
        table="onthefly",
    ),
)
