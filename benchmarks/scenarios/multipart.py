"""Multipart: the random payload through the gateway's artStore-compatible multipart
route (m: a `compression_algorithm=none` field, then the `file` part) against the raw
PUT of the same bytes (c, `passthrough.py`). Figure 3.
"""

from __future__ import annotations

from benchmarks.curl import curl_upload
from benchmarks.datasets import Datasets
from benchmarks.figure import Figure, Reading
from benchmarks.scenario import Bench, Measurement, Scenario, expect_equal
from benchmarks.summary import Summaries, human_size

FIELDS = {"compression_algorithm": "none"}


def run_multipart(bench: Bench) -> Measurement:
    payload = bench.data.random()
    form = bench.data.multipart(payload, filename="random.bin", fields=FIELDS)
    m, reply = curl_upload(
        bench,
        "m",
        url=f"{bench.stack.gateway().url}/api/v1/files/upload",
        method="POST",
        body=form.path,
        content_type=form.content_type,
        payload=payload,
    )
    try:
        expect_equal("m", "file_size", reply.get("file_size"), payload.size)
        expect_equal("m", "checksum", reply.get("checksum"), payload.sha256)
        expect_equal("m", "stored_checksum", reply.get("stored_checksum"), payload.sha256)
        expect_equal("m", "compression_algorithm", reply.get("compression_algorithm"), "none")
    finally:
        bench.stack.delete_stored(reply["file_id"])
    return m


def _random_form(data: Datasets) -> None:
    data.multipart(data.random(), filename="random.bin", fields=FIELDS)


SCENARIOS = (
    Scenario(
        "m",
        "gateway -> SE, multipart POST, none",
        run_multipart,
        _random_form,
        ("se", "gateway"),
    ),
)


def multipart_vs_raw(s: Summaries) -> Reading:
    m, c = s["m"], s["c"]
    return Reading(
        f"3. multipart {human_size(m.payload_bytes)}, MB/s: gateway multipart (m) / raw PUT (c)",
        m.mb_s,
        c.mb_s,
        "MB/s",
        chart="multipart / raw PUT\nMB/s",
    )


FIGURES = (Figure("multipart.mb_s.multipart_vs_raw", ("m", "c"), multipart_vs_raw),)
