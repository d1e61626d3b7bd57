"""Memory: the gateway's peak RSS (sampled every 50 ms over its process tree) during one
10 GiB upload made on the fly (big) and during 100 concurrent 100 MiB uploads (conc),
both on an instance of their own (`gateway-mem`) that nothing else has grown; and
during the 1 GiB pass-through (c) and zstd (d) uploads on `gateway`. Figures 5 and
issue 2's memory bar: a few blocks per upload, never the file.

The bytes are made on the fly (`onthefly.py`): 10 GiB would not fit on tmpfs next to
the SE's copy.
"""

from __future__ import annotations

from benchmarks.figure import Figure, Reading
from benchmarks.onthefly import upload_on_the_fly
from benchmarks.scenario import Bench, Measurement, Scenario
from benchmarks.summary import MiB, Summaries, human_size


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


# -- figures ---------------------------------------------------------------------------


def _one_upload(figure_key: str, key: str, label: str) -> Figure:
    """Peak RSS during one upload of the tmpfs payload (issue 2's bar)."""

    def compute(s: Summaries) -> Reading | None:
        upload = s[key]
        if upload.gateway_peak_rss is None:
            return None
        return Reading(
            f"gateway peak RSS during a {human_size(upload.payload_bytes)} upload, {label}",
            upload.gateway_peak_rss / MiB,
            None,
            "MiB",
            kind="absolute",
            chart=f"peak RSS MiB, 1 upload\n{label}",
        )

    return Figure(figure_key, (key,), compute)


def big_upload(s: Summaries) -> Reading | None:
    big = s["big"]
    if big.gateway_peak_rss is None:
        return None
    return Reading(
        f"5. gateway peak RSS, one {human_size(big.payload_bytes)} upload made on the fly",
        big.gateway_peak_rss / MiB,
        None,
        "MiB",
        kind="absolute",
        chart=f"peak RSS MiB, {human_size(big.payload_bytes)}",
    )


def concurrent_uploads(s: Summaries) -> Reading | None:
    conc = s["conc"]
    if conc.gateway_peak_rss is None:
        return None
    run = conc.runs[0].extra
    return Reading(
        f"5. gateway peak RSS, {run['concurrency']} concurrent"
        f" {human_size(run['size_each'])} uploads",
        conc.gateway_peak_rss / MiB,
        None,
        "MiB",
        kind="absolute",
        chart=f"peak RSS MiB, {run['concurrency']} concurrent",
    )


FIGURES = (
    _one_upload("memory.peak_rss.passthrough", "c", "pass-through (c)"),
    _one_upload("memory.peak_rss.zstd", "d", "zstd (d)"),
    Figure("memory.peak_rss.big", ("big",), big_upload),
    Figure("memory.peak_rss.concurrent", ("conc",), concurrent_uploads),
)
