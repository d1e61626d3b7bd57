"""Pass-through: the same random payload (1 GiB by default) uploaded straight to the SE
(a), through nginx (b) and through the gateway with compression none (c). Figures 1:
the gateway's wall MB/s and CPU-s per GiB against nginx's and the direct upload's.

a and b send the prebuilt multipart body the SE's upload route takes; c is the raw PUT
of the same bytes (the requests differ by ~200 bytes of framing).
"""

from __future__ import annotations

from benchmarks.curl import curl_upload, gateway_upload
from benchmarks.datasets import Datasets
from benchmarks.figure import Figure, Reading
from benchmarks.scenario import Bench, Measurement, Scenario, expect_equal
from benchmarks.summary import Summaries, human_size


def _se_upload(bench: Bench, key: str, url: str) -> Measurement:
    payload = bench.data.random()
    form = bench.data.multipart(payload)
    m, reply = curl_upload(
        bench,
        key,
        url=url,
        method="POST",
        body=form.path,
        content_type=form.content_type,
        payload=payload,
    )
    try:
        expect_equal(key, "file_size", reply.get("file_size"), payload.size)
        expect_equal(key, "checksum", reply.get("checksum"), payload.sha256)
    finally:
        bench.stack.delete_stored(reply["file_id"])
    return m


def run_direct(bench: Bench) -> Measurement:
    return _se_upload(bench, "a", f"{bench.stack.se().url}/api/v1/files/upload")


def run_nginx(bench: Bench) -> Measurement:
    return _se_upload(bench, "b", f"{bench.stack.nginx().url}/api/v1/files/upload")


def run_gateway_none(bench: Bench) -> Measurement:
    return gateway_upload(bench, "c", bench.data.random(), "none")


def _random_form(data: Datasets) -> None:
    data.multipart(data.random())


SCENARIOS = (
    Scenario("a", "direct to the SE (multipart POST)", run_direct, _random_form),
    Scenario("b", "nginx -> SE (multipart POST)", run_nginx, _random_form),
    Scenario("c", "gateway -> SE, compression none (raw PUT)", run_gateway_none, Datasets.random),
)


# -- figures ---------------------------------------------------------------------------


def mb_s_vs_nginx(s: Summaries) -> Reading:
    c, b = s["c"], s["b"]
    return Reading(
        f"1. pass-through {human_size(c.payload_bytes)}, wall MB/s: gateway (c) / nginx (b)",
        c.mb_s,
        b.mb_s,
        "MB/s",
        chart="pass-through MB/s\ngateway / nginx",
    )


def mb_s_vs_direct(s: Summaries) -> Reading:
    c, a = s["c"], s["a"]
    return Reading(
        f"1. pass-through {human_size(c.payload_bytes)}, wall MB/s:"
        " gateway (c) / direct to the SE (a)",
        c.mb_s,
        a.mb_s,
        "MB/s",
    )


def cpu_minus_sha256_vs_nginx(s: Summaries) -> Reading:
    """The gateway must hash, nginx does not: the bare sha256 (`sha`, same run) is taken out."""
    sha256_cpu = s["sha"].cpu_per_gib("ref")
    return Reading(
        f"1. pass-through CPU-s per GiB: (gateway (c) - bare sha256 {sha256_cpu:.2f}) / nginx (b)",
        s["c"].cpu_per_gib("gateway") - sha256_cpu,
        s["b"].cpu_per_gib("nginx"),
        "s",
        chart="pass-through CPU/GiB\n(gateway - sha256) / nginx",
    )


def cpu_vs_nginx(s: Summaries) -> Reading:
    return Reading(
        "1. pass-through CPU-s per GiB, sha256 included: gateway (c) / nginx (b)",
        s["c"].cpu_per_gib("gateway"),
        s["b"].cpu_per_gib("nginx"),
        "s",
    )


FIGURES = (
    Figure("passthrough.mb_s.gateway_vs_nginx", ("c", "b"), mb_s_vs_nginx),
    Figure("passthrough.mb_s.gateway_vs_direct", ("c", "a"), mb_s_vs_direct),
    Figure(
        "passthrough.cpu.gateway_minus_sha256_vs_nginx",
        ("c", "b", "sha"),
        cpu_minus_sha256_vs_nginx,
    ),
    Figure("passthrough.cpu.gateway_vs_nginx", ("c", "b"), cpu_vs_nginx),
)
