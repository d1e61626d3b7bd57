"""First byte: streaming for real. A client paced at 20 MB/s uploads 200 MiB made on the
fly through the gateway (fb); the delay is the SE's first file byte (`first_byte_at`,
recorded by the reference SE) after the client's first body byte, both read from the
same clock. Figure 6.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from benchmarks.figure import Figure, Reading
from benchmarks.onthefly import upload_on_the_fly
from benchmarks.scenario import Bench, Measurement, Scenario
from benchmarks.summary import Summaries


def se_first_byte_delay(bench: Bench, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The SE's `first_byte_at` of the (one) paced upload against the client's first byte."""
    stack = bench.stack
    record = records[0]
    file_id = record["reply"]["file_id"]
    request = urllib.request.Request(
        f"{stack.se().url}/api/v1/files/{file_id}",
        headers={"Authorization": f"Bearer {stack.service_token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        attrs = json.loads(resp.read())
    se_first = attrs.get("first_byte_at")
    if se_first is None:
        raise RuntimeError("fb: the SE recorded no first_byte_at (an SE without the field?)")
    client_first = record["first_body_byte_at"]
    return {
        "client_first_body_byte_at": client_first,
        "se_first_byte_at": se_first,
        "first_byte_delay_ms": (se_first - client_first) * 1000,
        "client_body_s": record["body_sent_s"],
        "client_rate_mb_s": record["reply"]["file_size"] / 1e6 / record["body_sent_s"],
        "upload_wall_s": record["wall_s"],
    }


def run_first_byte(bench: Bench) -> Measurement:
    opts = bench.opts
    size = min(opts.stream_size, 4 * 2**20) if bench.warm else opts.stream_size
    return upload_on_the_fly(
        bench, "fb", size=size, rate=opts.stream_rate, inspect=se_first_byte_delay
    )


SCENARIOS = (
    Scenario(
        "fb",
        "20 MB/s paced upload -> gateway -> SE (first byte)",
        run_first_byte,
        servers=("se", "gateway"),
        rounds="once",
        uses_payload=False,
        table="onthefly",
    ),
)


def first_byte_delay(s: Summaries) -> Reading | None:
    fb = s["fb"]
    delay = fb.extra("first_byte_delay_ms")
    if delay is None:
        return None
    return Reading(
        "6. first body byte at the SE after the client's,"
        f" client at {fb.extra('client_rate_mb_s'):.1f} MB/s",
        delay,
        None,
        "ms",
        kind="absolute",
        chart="first byte delay ms",
    )


FIGURES = (Figure("first_byte.delay_ms", ("fb",), first_byte_delay),)
