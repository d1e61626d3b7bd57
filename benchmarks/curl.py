"""One upload of a tmpfs payload by curl, measured: the client of every scenario whose
bytes were written before the run (pass-through, codecs, multipart, Redis registry).

`curl --http1.1 -T - -H 'Transfer-Encoding: chunked' -H 'Expect:' ... < payload`: the
same command for every path, reading a tmpfs file on stdin (see benchmarks/README.md,
"How curl is driven, and why").
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.datasets import Dataset
from benchmarks.procstat import (
    RssSampler,
    hwm_bytes,
    main_thread_share,
    process_tree,
    reset_hwm,
    run_measured,
    thread_cpu_seconds,
    tree_cpu_seconds,
    tree_sys_seconds,
)
from benchmarks.scenario import Bench, Measurement, expect_equal, merge_others, roles_for

CURL_TIMEOUT_S = 900


def curl_upload(
    bench: Bench,
    key: str,
    *,
    url: str,
    method: str,
    body: Path,
    content_type: str,
    payload: Dataset,
    gateway_role: str = "gateway",
) -> tuple[Measurement, dict[str, Any]]:
    """Upload `body` with curl, chunked, read from a tmpfs file on stdin (`-T -`).

    Measures the wall time of the curl process, the CPU of curl (its rusage) and of
    every server's process tree (from /proc, before and after), and the gateway's
    peak RSS (sampled every 50 ms, and VmHWM reset at the start). `gateway_role` is
    the gateway instance on the path (see `stack.GATEWAY_VARIANTS`): its figures are
    reported as `gateway`, the other instances' (idle) CPU as `other`."""
    stack = bench.stack
    roots = roles_for(stack.roots(), gateway_role)
    out = bench.scratch / f"reply-{key}.json"
    argv = [
        "curl",
        "--silent",
        "--show-error",
        "--http1.1",
        "--request",
        method,
        "--upload-file",
        "-",
        "--header",
        "Transfer-Encoding: chunked",
        "--header",
        "Expect:",
        "--header",
        f"Content-Type: {content_type}",
        "--header",
        f"@{stack.auth_header_file}",
        "--output",
        str(out),
        "--write-out",
        "%{http_code} %{size_upload}",
        "--max-time",
        str(CURL_TIMEOUT_S),
        url,
    ]
    gateway_root = roots.get("gateway")
    if gateway_root is not None:
        reset_hwm(process_tree(gateway_root))
    sampler = RssSampler(gateway_root) if gateway_root is not None else None
    before = {role: tree_cpu_seconds(pid) for role, pid in roots.items()}
    sys_before = {role: tree_sys_seconds(pid) for role, pid in roots.items()}
    gw_threads_before = thread_cpu_seconds(gateway_root) if gateway_root is not None else {}
    with open(body, "rb") as stdin:
        if sampler is not None:
            sampler.__enter__()
        try:
            proc, wall, usage = run_measured(argv, stdin=stdin, stdout=subprocess.PIPE)
        finally:
            if sampler is not None:
                sampler.__exit__(None, None, None)
    after = {role: tree_cpu_seconds(pid) for role, pid in roots.items()}
    sys_after = {role: tree_sys_seconds(pid) for role, pid in roots.items()}
    gw_threads_after = thread_cpu_seconds(gateway_root) if gateway_root is not None else {}
    written = proc.stdout.read().decode() if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{key}: curl exited {proc.returncode} ({written!r})")
    http_code, _, uploaded = written.partition(" ")
    reply_text = out.read_text(errors="replace") if out.exists() else ""
    if http_code not in ("200", "201"):
        raise RuntimeError(f"{key}: HTTP {http_code}: {reply_text[:500]}")
    reply: dict[str, Any] = json.loads(reply_text)
    by_server = {role: after[role] - before[role] for role in roots}
    cpu = merge_others(by_server)
    cpu["curl"] = usage.ru_utime + usage.ru_stime
    extra: dict[str, Any] = {
        "curl_size_upload": int(uploaded or 0),
        "gateway_role": gateway_role,
        "cpu_by_server_s": by_server,
        # the kernel-mode part of cpu_s (socket and tmpfs copies, page faults, futexes)
        "cpu_sys_s": merge_others({role: sys_after[role] - sys_before[role] for role in roots})
        | {"curl": usage.ru_stime},
    }
    if gateway_root is not None and sampler is not None:
        extra["rss_samples"] = sampler.samples
        # the gateway's event-loop thread alone (1 worker: the main thread of the process)
        extra["gateway_loop_cpu_s"] = main_thread_share(
            gateway_root, gw_threads_before, gw_threads_after
        )
    measurement = Measurement(
        key=key,
        payload_bytes=payload.size,
        wall_s=wall,
        cpu_s=cpu,
        gateway_peak_rss=sampler.peak if sampler is not None else None,
        gateway_hwm=hwm_bytes(process_tree(gateway_root)) if gateway_root is not None else None,
        extra=extra,
    )
    return measurement, reply


def gateway_upload(
    bench: Bench, key: str, payload: Dataset, codec: str, gateway_role: str = "gateway"
) -> Measurement:
    """PUT `payload` raw to a gateway instance with `codec`; checks the reply (sizes, the
    original's sha256, the codec, and for `none` the stored bytes' sha256) and deletes
    the stored file."""
    base = bench.stack.gateway(gateway_role).url
    url = f"{base}/api/v1/files/{payload.path.name}?compression_algorithm={codec}"
    m, reply = curl_upload(
        bench,
        key,
        url=url,
        method="PUT",
        body=payload.path,
        content_type=payload.content_type,
        payload=payload,
        gateway_role=gateway_role,
    )
    try:
        expect_equal(key, "file_size", reply.get("file_size"), payload.size)
        expect_equal(key, "checksum", reply.get("checksum"), payload.sha256)
        expect_equal(key, "compression_algorithm", reply.get("compression_algorithm"), codec)
        if codec == "none":
            expect_equal(key, "stored_checksum", reply.get("stored_checksum"), payload.sha256)
    finally:
        bench.stack.delete_stored(reply["file_id"])
    m.extra["stored_size"] = reply.get("stored_size")
    m.extra["compression_ratio"] = reply.get("compression_ratio")
    return m
