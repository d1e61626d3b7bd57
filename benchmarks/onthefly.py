"""Uploads made on the fly, measured: `loadgen.py` (one asyncio client, a subprocess)
sends bytes that never touch a disk to a gateway instance, while the harness samples
that gateway's RSS and reads every server's CPU. The client of the memory and
first-byte scenarios (`scenarios/memory.py`, `scenarios/first_byte.py`)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.procstat import (
    RssSampler,
    hwm_bytes,
    process_tree,
    reset_hwm,
    rss_bytes,
    run_measured,
    tree_cpu_seconds,
)
from benchmarks.scenario import Bench, Measurement, Skipped, merge_others, roles_for

ROOT = Path(__file__).resolve().parent.parent

# Reads what the SE holds about the uploads (loadgen's records) before they are deleted;
# its dict goes into `Measurement.extra`.
Inspect = Callable[[Bench, list[dict[str, Any]]], dict[str, Any]]


def _tmpfs_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def upload_on_the_fly(
    bench: Bench,
    key: str,
    *,
    size: int,
    concurrency: int = 1,
    rate: float | None = None,
    gateway_role: str = "gateway",
    inspect: Inspect | None = None,
) -> Measurement:
    """Run `benchmarks/loadgen.py` against the gateway, measuring the gateway's peak
    RSS (sampled every 50 ms, and VmHWM), the CPU of every server and of the client.
    Every upload must succeed (201, sizes, checksums: loadgen checks them); every
    stored file is deleted afterwards."""
    stack = bench.stack
    needed = size * concurrency + 512 * 2**20
    free = _tmpfs_free(stack.se_data)
    if free < needed:
        raise Skipped(
            f"the SE's tmpfs has {free / 2**30:.1f} GiB free, {needed / 2**30:.1f} GiB needed"
            " (free /dev/shm or lower --big-size / --concurrent-size)"
        )
    auth = bench.auth_file()
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
        inspected = inspect(bench, result["results"]) if inspect is not None else {}
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
        **inspected,
    }
    return Measurement(
        key,
        size * concurrency,
        wall,
        cpu,
        gateway_peak_rss=sampler.peak,
        gateway_hwm=hwm_bytes(process_tree(gateway_root)),
        extra=extra,
    )
