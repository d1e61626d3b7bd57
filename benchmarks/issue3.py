"""Issue 3's scenarios, beside issue 2's (a-d), and the full registry `ALL`.

| key | what | rounds |
|---|---|---|
| m | 1 GiB random as a multipart POST through the gateway (vs the raw PUT c) | repeat |
| d2 | d on a second gateway with `INGESTER_ZSTD_THREADS=2` | repeat |
| sha | bare `hashlib.sha256` over the random payload, in a subprocess | repeat |
| zref | python-zstandard alone, level 3, 1 thread, on the text payload | repeat |
| zref2 | the same with `threads=2` (reported) | repeat |
| br, gz | gateway brotli / gzip on the text payload (own instance) | once |
| bref, gref | brotli / zlib alone on the same text, the gateway's levels | once |
| s1, s2 | 4 KiB multipart uploads by wrk, 64 clients: gateway, 1 and 2 workers | once |
| sb | the same against the FastAPI baseline (`baselines/`) | once |
| sn | the same through nginx straight to the SE | once |
| jwt | TokenVerifier per-request cost, cache off vs on, in a subprocess | once |
| fb | a 20 MB/s paced upload: SE first byte minus client first byte | once |
| big | one 10 GiB upload made on the fly: gateway peak RSS (own instance) | once |
| conc | 100 concurrent 100 MiB uploads made on the fly: the same instance's peak RSS | once |

The small-file runs (s1, s2), brotli and gzip (br, gz) and the memory figures (big,
conc) use gateway instances of their own, with the same settings (see
`stack.GATEWAY_VARIANTS`): a Python process keeps what its allocator grew to, and one
figure's history must not be another figure's peak RSS.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.datasets import Datasets
from benchmarks.procstat import (
    RssSampler,
    hwm_bytes,
    process_tree,
    reset_hwm,
    rss_bytes,
    run_measured,
    tree_cpu_seconds,
)
from benchmarks.scenarios import (
    SCENARIOS,
    Bench,
    Measurement,
    Scenario,
    Skipped,
    _check,
    _gateway_upload,
    curl_upload,
    merge_others,
    roles_for,
)
from benchmarks.smallfiles import run_wrk

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT_S = 1800


_SETTINGS_PROBE = """
import json, msgspec
from ingester_gateway.config import Settings
print(json.dumps({f.name: f.default for f in msgspec.structs.fields(Settings)
                  if isinstance(f.default, (int, float, str, bool))}))
"""


@functools.cache
def gateway_settings() -> dict[str, Any]:
    """The gateway's setting defaults, read by a subprocess that imports the gateway the
    way its servers do (so `--src` is honoured)."""
    result: dict[str, Any] = json.loads(
        subprocess.run(
            [sys.executable, "-c", _SETTINGS_PROBE],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    )
    return result


def gateway_default(name: str) -> Any:
    """The default of one gateway setting (the references use the same levels)."""
    return gateway_settings()[name]


def zstd_threads_supported() -> bool:
    """Whether the gateway reads `INGESTER_ZSTD_THREADS` (unknown names are ignored)."""
    return "zstd_threads" in gateway_settings()


def _python_json(argv: list[str]) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    if proc.returncode != 0:
        what = " ".join(argv[:3])
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- m: multipart through the gateway ------------------------------------------------

MULTIPART_FIELDS = {"compression_algorithm": "none"}


def run_multipart(bench: Bench) -> Measurement:
    payload = bench.data.random()
    form = bench.data.multipart(payload, filename="random.bin", fields=MULTIPART_FIELDS)
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
        _check("m", "file_size", reply.get("file_size"), payload.size)
        _check("m", "checksum", reply.get("checksum"), payload.sha256)
        _check("m", "stored_checksum", reply.get("stored_checksum"), payload.sha256)
        _check("m", "compression_algorithm", reply.get("compression_algorithm"), "none")
    finally:
        bench.stack.delete_stored(reply["file_id"])
    return m


def _random_form(data: Datasets) -> None:
    data.multipart(data.random(), filename="random.bin", fields=MULTIPART_FIELDS)


# -- cr: pass-through with nodes from Redis (issue 4) ---------------------------------


def run_redis_registry(bench: Bench) -> Measurement:
    return _gateway_upload(bench, "cr", bench.data.random(), "none", "gateway-redis")


# -- gateway codecs -------------------------------------------------------------------


def run_zstd_threads(bench: Bench) -> Measurement:
    m = _gateway_upload(bench, "d2", bench.data.text(), "zstd", gateway_role="gateway-zt2")
    m.extra["zstd_threads_supported"] = zstd_threads_supported()
    return m


def run_gateway_brotli(bench: Bench) -> Measurement:
    return _gateway_upload(bench, "br", bench.data.text(), "brotli", "gateway-codecs")


def run_gateway_gzip(bench: Bench) -> Measurement:
    return _gateway_upload(bench, "gz", bench.data.text(), "gzip", "gateway-codecs")


# -- references in a subprocess -------------------------------------------------------


def run_sha(bench: Bench) -> Measurement:
    payload = bench.data.random()
    r = _python_json(["-m", "benchmarks.refwork", "sha256", str(payload.path)])
    _check("sha", "sha256", r["sha256"], payload.sha256)
    return Measurement("sha", r["bytes"], r["wall_s"], {"ref": r["cpu_s"]}, extra=r)


def _codec_ref(bench: Bench, key: str, codec: str, level: int, threads: int = 0) -> Measurement:
    payload = bench.data.text()
    argv = ["-m", "benchmarks.refwork", "codec", codec, str(payload.path)]
    r = _python_json([*argv, "--level", str(level), "--threads", str(threads)])
    r["compression_ratio"] = r["bytes"] / max(1, r["bytes_out"])
    return Measurement(key, r["bytes"], r["wall_s"], {"ref": r["cpu_s"]}, extra=r)


def run_zstd_ref(bench: Bench) -> Measurement:
    return _codec_ref(bench, "zref", "zstd", gateway_default("zstd_level"))


def run_zstd_ref_threads(bench: Bench) -> Measurement:
    return _codec_ref(bench, "zref2", "zstd", gateway_default("zstd_level"), threads=2)


def run_brotli_ref(bench: Bench) -> Measurement:
    return _codec_ref(bench, "bref", "brotli", gateway_default("brotli_quality"))


def run_gzip_ref(bench: Bench) -> Measurement:
    return _codec_ref(bench, "gref", "gzip", gateway_default("gzip_level"))


def run_jwt(bench: Bench) -> Measurement:
    keys = bench.stack.workdir / "keys"
    count = 200 if bench.warm else bench.opts.jwt_count
    r = _python_json(
        [
            *("-m", "benchmarks.refwork", "jwt"),
            *(str(keys / "private.pem"), str(keys / "public.pem")),
            *("--count", str(count)),
        ]
    )
    wall = r["uncached"]["wall_s"] + r["cached"]["wall_s"]
    return Measurement("jwt", 0, wall, {}, extra=r)


# -- small files ----------------------------------------------------------------------


def run_small_gateway(bench: Bench) -> Measurement:
    url = f"{bench.stack.gateway('gateway-w1').url}/api/v1/files/upload"
    return run_wrk(bench, "s1", "gateway-w1", url)


def run_small_gateway_w2(bench: Bench) -> Measurement:
    url = f"{bench.stack.gateway('gateway-w2').url}/api/v1/files/upload"
    return run_wrk(bench, "s2", "gateway-w2", url)


def run_small_baseline(bench: Bench) -> Measurement:
    return run_wrk(bench, "sb", "baseline", f"{bench.stack.baseline().url}/api/v1/files/upload")


def run_small_nginx(bench: Bench) -> Measurement:
    return run_wrk(bench, "sn", "nginx", f"{bench.stack.nginx().url}/api/v1/files/upload")


# -- uploads made on the fly: memory, first byte --------------------------------------


def _tmpfs_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def loadgen(
    bench: Bench,
    key: str,
    *,
    size: int,
    concurrency: int = 1,
    rate: float | None = None,
    gateway_role: str = "gateway",
) -> Measurement:
    """Run `benchmarks/loadgen.py` against the gateway, measuring the gateway's peak
    RSS (sampled every 50 ms, and VmHWM), the CPU of every server and of the client."""
    stack = bench.stack
    needed = size * concurrency + 512 * 2**20
    free = _tmpfs_free(stack.se_data)
    if free < needed:
        raise Skipped(
            f"the SE's tmpfs has {free / 2**30:.1f} GiB free, {needed / 2**30:.1f} GiB needed"
            " (free /dev/shm or lower --big-size / --concurrent-size)"
        )
    auth = bench.scratch / "auth.value"
    if not auth.exists():
        fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"Bearer {stack.user_token}\n")
    argv = [
        *(sys.executable, "-m", "benchmarks.loadgen", stack.gateway(gateway_role).url),
        *("--auth-file", str(auth), "--size", str(size), "--concurrency", str(concurrency)),
    ]
    if rate:
        argv += ["--rate", str(rate), "--piece", str(64 * 1024)]
    roots = roles_for(stack.roots(), gateway_role)
    gateway_root = roots["gateway"]
    rss_before = rss_bytes(process_tree(gateway_root))
    reset_hwm(process_tree(gateway_root))
    before = {role: tree_cpu_seconds(pid) for role, pid in roots.items()}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out_path = bench.scratch / f"loadgen-{key}.json"
    with RssSampler(gateway_root) as sampler, open(out_path, "wb") as out:
        proc, wall, usage = run_measured(argv, stdout=out, cwd=ROOT, env=env)
    after = {role: tree_cpu_seconds(pid) for role, pid in roots.items()}
    if proc.returncode != 0:
        raise RuntimeError(f"{key}: loadgen exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    replies = [r.get("reply") or {} for r in result["results"]]
    file_ids = [reply["file_id"] for reply in replies if reply.get("file_id")]
    try:
        failed = [r for r in result["results"] if not r.get("ok")]
        if failed:
            raise RuntimeError(
                f"{key}: {len(failed)} of {concurrency} uploads failed, first: {failed[0]}"
            )
        first_byte = None
        if rate:
            first_byte = _first_byte_delay(bench, result["results"][0])
    finally:
        for file_id in file_ids:
            stack.delete_stored(file_id)
    cpu = merge_others({role: after[role] - before[role] for role in roots})
    cpu["client"] = usage.ru_utime + usage.ru_stime
    extra: dict[str, Any] = {
        "concurrency": concurrency,
        "size_each": size,
        "ok": result["ok"],
        "gateway_role": gateway_role,
        "gateway_rss_before_bytes": rss_before,
        "client_max_rss_bytes": result["client_max_rss_bytes"],
        "rss_samples": sampler.samples,
    }
    if first_byte is not None:
        extra.update(first_byte)
    return Measurement(
        key,
        size * concurrency,
        wall,
        cpu,
        gateway_peak_rss=sampler.peak,
        gateway_hwm=hwm_bytes(process_tree(gateway_root)),
        extra=extra,
    )


def _first_byte_delay(bench: Bench, record: dict[str, Any]) -> dict[str, Any]:
    stack = bench.stack
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
    return loadgen(bench, "fb", size=size, rate=opts.stream_rate)


def run_big(bench: Bench) -> Measurement:
    size = min(bench.opts.big_size, 64 * 2**20) if bench.warm else bench.opts.big_size
    return loadgen(bench, "big", size=size, gateway_role="gateway-mem")


def run_concurrent(bench: Bench) -> Measurement:
    opts = bench.opts
    if bench.warm:
        size = min(opts.concurrent_size, 8 * 2**20)
        return loadgen(bench, "conc", size=size, concurrency=2, gateway_role="gateway-mem")
    return loadgen(
        bench,
        "conc",
        size=opts.concurrent_size,
        concurrency=opts.concurrent,
        gateway_role="gateway-mem",
    )


def _text(data: Datasets) -> None:
    data.text()


def _random(data: Datasets) -> None:
    data.random()


GW = ("se", "gateway")
SMALL = ("se",)

ISSUE3: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("m", "gateway -> SE, multipart POST, none", run_multipart, _random_form, GW),
        Scenario(
            "cr",
            "gateway, nodes from Redis, breakers on -> SE, compression none (raw PUT)",
            run_redis_registry,
            _random,
            ("se", "redis", "gateway-redis"),
        ),
        Scenario(
            "d2",
            "gateway INGESTER_ZSTD_THREADS=2 -> SE, zstd on text (raw PUT)",
            run_zstd_threads,
            _text,
            ("se", "gateway-zt2"),
        ),
        Scenario("sha", "bare hashlib.sha256 (subprocess)", run_sha, _random, (), table="ref"),
        Scenario("zref", "python-zstandard alone, 1 thread", run_zstd_ref, _text, (), table="ref"),
        Scenario(
            "zref2",
            "python-zstandard alone, threads=2",
            run_zstd_ref_threads,
            _text,
            (),
            table="ref",
        ),
        Scenario(
            "br",
            "gateway -> SE, brotli on text (raw PUT)",
            run_gateway_brotli,
            _text,
            ("se", "gateway-codecs"),
            "once",
        ),
        Scenario("bref", "brotli alone", run_brotli_ref, _text, (), "once", table="ref"),
        Scenario(
            "gz",
            "gateway -> SE, gzip on text (raw PUT)",
            run_gateway_gzip,
            _text,
            ("se", "gateway-codecs"),
            "once",
        ),
        Scenario("gref", "zlib (gzip) alone", run_gzip_ref, _text, (), "once", table="ref"),
        Scenario(
            "s1",
            "4 KiB x 64 clients -> gateway, 1 worker",
            run_small_gateway,
            servers=("se", "gateway-w1"),
            rounds="once",
            uses_payload=False,
            table="small",
        ),
        Scenario(
            "s2",
            "4 KiB x 64 clients -> gateway, 2 workers",
            run_small_gateway_w2,
            servers=("se", "gateway-w2"),
            rounds="once",
            uses_payload=False,
            table="small",
        ),
        Scenario(
            "sb",
            "4 KiB x 64 clients -> FastAPI baseline",
            run_small_baseline,
            servers=("se", "baseline"),
            rounds="once",
            uses_payload=False,
            table="small",
        ),
        Scenario(
            "sn",
            "4 KiB x 64 clients -> nginx -> SE",
            run_small_nginx,
            servers=("se", "nginx"),
            rounds="once",
            uses_payload=False,
            table="small",
        ),
        Scenario(
            "jwt",
            "TokenVerifier cost per request (subprocess)",
            run_jwt,
            servers=(),
            rounds="once",
            uses_payload=False,
            table="none",
        ),
        Scenario(
            "fb",
            "20 MB/s paced upload -> gateway -> SE (first byte)",
            run_first_byte,
            servers=GW,
            rounds="once",
            uses_payload=False,
        ),
        Scenario(
            "big",
            "one 10 GiB upload made on the fly -> gateway -> SE",
            run_big,
            servers=("se", "gateway-mem"),
            rounds="once",
            uses_payload=False,
        ),
        Scenario(
            "conc",
            "100 x 100 MiB concurrent uploads made on the fly",
            run_concurrent,
            servers=("se", "gateway-mem"),
            rounds="once",
            uses_payload=False,
        ),
    )
}

ALL: dict[str, Scenario] = {**SCENARIOS, **ISSUE3}
