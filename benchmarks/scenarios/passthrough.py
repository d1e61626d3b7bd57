"""Pass-through: the same random payload (1 GiB by default) uploaded straight to the SE
(a), through nginx (b) and through the gateway with compression none (c). Figures 1:
the gateway's wall MB/s and CPU-s per GiB against nginx's and the direct upload's.

a and b send the prebuilt multipart body the SE's upload route takes; c is the raw PUT
of the same bytes (the requests differ by ~200 bytes of framing).
"""

from __future__ import annotations

from benchmarks.curl import curl_upload, gateway_upload
from benchmarks.datasets import Datasets
from benchmarks.scenario import Bench, Measurement, Scenario, expect_equal


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
