"""Codecs: the log-like text payload compressed by the gateway on the way to the SE
(zstd: d, and d2 on an instance with `INGESTER_ZSTD_THREADS=2`; brotli: br; gzip: gz)
beside the libraries alone on the same text at the gateway's levels (zref, zref2,
bref, gref), and the bare sha256 every checksumming hop pays (sha). Figures 2: the
gateway's MB/s over the library's, and the compression each achieved.

The references run in a subprocess of their own (`refwork.py`), so nothing of the
harness is in their figures. brotli and gzip use an instance of their own
(`gateway-codecs`): their windows must not grow `gateway`'s peak RSS.
"""

from __future__ import annotations

from benchmarks.curl import gateway_upload
from benchmarks.datasets import Datasets
from benchmarks.figure import Figure, Reading
from benchmarks.refwork import run_refwork
from benchmarks.scenario import Bench, Measurement, Scenario, expect_equal
from benchmarks.stack import gateway_default, zstd_threads_supported
from benchmarks.summary import Summaries, human_size

# -- through the gateway ---------------------------------------------------------------


def run_gateway_zstd(bench: Bench) -> Measurement:
    return gateway_upload(bench, "d", bench.data.text(), "zstd")


def run_zstd_threads(bench: Bench) -> Measurement:
    m = gateway_upload(bench, "d2", bench.data.text(), "zstd", gateway_role="gateway-zt2")
    m.extra["zstd_threads_supported"] = zstd_threads_supported()
    return m


def run_gateway_brotli(bench: Bench) -> Measurement:
    return gateway_upload(bench, "br", bench.data.text(), "brotli", "gateway-codecs")


def run_gateway_gzip(bench: Bench) -> Measurement:
    return gateway_upload(bench, "gz", bench.data.text(), "gzip", "gateway-codecs")


# -- the libraries alone, in a subprocess -----------------------------------------------


def run_sha(bench: Bench) -> Measurement:
    payload = bench.data.random()
    r = run_refwork("sha256", str(payload.path))
    expect_equal("sha", "sha256", r["sha256"], payload.sha256)
    return Measurement("sha", r["bytes"], r["wall_s"], {"ref": r["cpu_s"]}, extra=r)


def _library(bench: Bench, key: str, codec: str, level: int, threads: int = 0) -> Measurement:
    payload = bench.data.text()
    r = run_refwork(
        *("codec", codec, str(payload.path)),
        *("--level", str(level), "--threads", str(threads)),
    )
    r["compression_ratio"] = r["bytes"] / max(1, r["bytes_out"])
    return Measurement(key, r["bytes"], r["wall_s"], {"ref": r["cpu_s"]}, extra=r)


def run_zstd_ref(bench: Bench) -> Measurement:
    return _library(bench, "zref", "zstd", gateway_default("zstd_level"))


def run_zstd_ref_threads(bench: Bench) -> Measurement:
    return _library(bench, "zref2", "zstd", gateway_default("zstd_level"), threads=2)


def run_brotli_ref(bench: Bench) -> Measurement:
    return _library(bench, "bref", "brotli", gateway_default("brotli_quality"))


def run_gzip_ref(bench: Bench) -> Measurement:
    return _library(bench, "gref", "gzip", gateway_default("gzip_level"))


CODECS = ("se", "gateway-codecs")

SCENARIOS = (
    Scenario("d", "gateway -> SE, zstd on text (raw PUT)", run_gateway_zstd, Datasets.text),
    Scenario(
        "d2",
        "gateway INGESTER_ZSTD_THREADS=2 -> SE, zstd on text (raw PUT)",
        run_zstd_threads,
        Datasets.text,
        ("se", "gateway-zt2"),
    ),
    Scenario("sha", "bare hashlib.sha256 (subprocess)", run_sha, Datasets.random, (), table="ref"),
    Scenario(
        "zref", "python-zstandard alone, 1 thread", run_zstd_ref, Datasets.text, (), table="ref"
    ),
    Scenario(
        "zref2",
        "python-zstandard alone, threads=2",
        run_zstd_ref_threads,
        Datasets.text,
        (),
        table="ref",
    ),
    Scenario(
        "br",
        "gateway -> SE, brotli on text (raw PUT)",
        run_gateway_brotli,
        Datasets.text,
        CODECS,
        "once",
    ),
    Scenario("bref", "brotli alone", run_brotli_ref, Datasets.text, (), "once", table="ref"),
    Scenario(
        "gz",
        "gateway -> SE, gzip on text (raw PUT)",
        run_gateway_gzip,
        Datasets.text,
        CODECS,
        "once",
    ),
    Scenario("gref", "zlib (gzip) alone", run_gzip_ref, Datasets.text, (), "once", table="ref"),
)


# -- figures ---------------------------------------------------------------------------


def zstd_vs_library(s: Summaries) -> Reading:
    d, zref = s["d"], s["zref"]
    return Reading(
        f"2. zstd-3 on text {human_size(d.payload_bytes)}, MB/s: gateway (d, stores"
        f" {d.extra('compression_ratio') or 0:.2f}x) / python-zstandard alone,"
        f" 1 thread (zref, {zref.extra('compression_ratio') or 0:.2f}x)",
        d.mb_s,
        zref.mb_s,
        "MB/s",
        chart="zstd MB/s\ngateway / zstd alone",
    )


def zstd_threads2_vs_library(s: Summaries) -> Reading:
    d2, zref = s["d2"], s["zref"]
    honoured = all(m.extra.get("zstd_threads_supported") for m in d2.runs)
    return Reading(
        "2. zstd-3 MB/s: gateway with INGESTER_ZSTD_THREADS=2 (d2) / zstd alone, 1 thread"
        + ("" if honoured else " — setting not in this tree, ran single-threaded"),
        d2.mb_s,
        zref.mb_s,
        "MB/s",
        chart="zstd MB/s, threads=2\ngateway / zstd alone",
    )


def zstd_threads2_both(s: Summaries) -> Reading:
    return Reading(
        "2. zstd-3 threads=2 MB/s: gateway (d2) / python-zstandard alone, threads=2 (zref2)",
        s["d2"].mb_s,
        s["zref2"].mb_s,
        "MB/s",
    )


def zstd_cpu_vs_library(s: Summaries) -> Reading:
    """What the gateway adds around the codec: two sha256, the loop."""
    return Reading(
        "2. zstd CPU-s per GiB: gateway (d) / zstd alone (zref)",
        s["d"].cpu_per_gib("gateway"),
        s["zref"].cpu_per_gib("ref"),
        "s",
    )


def _vs_library(gateway_key: str, library_key: str, name: str) -> Figure:
    """brotli and gzip: reported, with the compression each achieved (the gateway's stored
    ratio can differ from the library's on 1 MiB blocks when it feeds smaller pieces)."""

    def compute(s: Summaries) -> Reading:
        through, alone = s[gateway_key], s[library_key]
        level = alone.runs[0].extra.get("level")
        return Reading(
            f"2. {name}-{level} on text, MB/s: gateway ({gateway_key}, stores"
            f" {through.extra('compression_ratio') or 0:.2f}x) / {name} alone ({library_key},"
            f" {alone.extra('compression_ratio') or 0:.2f}x)",
            through.mb_s,
            alone.mb_s,
            "MB/s",
            chart=f"{name} MB/s\ngateway / {name} alone",
        )

    return Figure(f"codecs.{name}.mb_s.gateway_vs_library", (gateway_key, library_key), compute)


FIGURES = (
    Figure("codecs.zstd.mb_s.gateway_vs_library", ("d", "zref"), zstd_vs_library),
    Figure(
        "codecs.zstd.mb_s.threads2_gateway_vs_library", ("d2", "zref"), zstd_threads2_vs_library
    ),
    Figure("codecs.zstd.mb_s.threads2_both", ("d2", "zref2"), zstd_threads2_both),
    Figure("codecs.zstd.cpu.gateway_vs_library", ("d", "zref"), zstd_cpu_vs_library),
    _vs_library("br", "bref", "brotli"),
    _vs_library("gz", "gref", "gzip"),
)
