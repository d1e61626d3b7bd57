"""Scenarios: one kind of measured work each, run `--repeat` times (or once).

A scenario is a key (`a`, `b`, ...), a title, the figures it yields per run
(`Measurement`) and a `run(bench)` function. Issue 2's four uploads and the shared
machinery are here; issue 3's scenarios are in `issue3.py`, which also builds the
full registry (`issue3.ALL`), and their table rows in `report.FIGURES`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from benchmarks.datasets import Dataset, Datasets
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

if TYPE_CHECKING:
    from benchmarks.stack import BenchStack

CURL_TIMEOUT_S = 900


class Skipped(Exception):
    """A scenario that cannot run here and now (e.g. not enough tmpfs for the SE's copy):
    the run goes on without it and the report says why."""


@dataclass
class Measurement:
    """One run of one scenario."""

    key: str
    payload_bytes: int
    wall_s: float
    cpu_s: dict[str, float]  # role (curl, se, nginx, gateway) -> CPU seconds, user+sys
    gateway_peak_rss: int | None = None  # bytes, sampled VmRSS of the gateway's tree
    gateway_hwm: int | None = None  # bytes, VmHWM after a reset at the start of the run
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        return self.payload_bytes / 1e6 / self.wall_s

    def cpu_per_gib(self, role: str) -> float:
        if not self.payload_bytes:
            return 0.0
        return self.cpu_s.get(role, 0.0) * 2**30 / self.payload_bytes


@dataclass
class Options:
    """Sizes of issue 3's scenarios (the command-line options; `--quick` shrinks them)."""

    small_count: int = 20_000  # 4 KiB uploads per server
    small_size: int = 4096
    small_connections: int = 64  # concurrent clients, one JWT each (rotated)
    small_threads: int = 2  # wrk threads
    big_size: int = 10 * 2**30  # the one big upload of the memory figure
    concurrent: int = 100  # concurrent uploads of the memory figure
    concurrent_size: int = 100 * 2**20
    stream_size: int = 200 * 2**20  # the paced upload of the first-byte figure
    stream_rate: float = 20e6  # bytes/s
    jwt_count: int = 5000


@dataclass
class Bench:
    """What a scenario may use: the servers, the payloads, a scratch directory, the
    sizes; `warm` is set for the warm-up pass (scenarios shrink what they do)."""

    stack: BenchStack
    data: Datasets
    scratch: Path
    opts: Options = field(default_factory=Options)
    warm: bool = False


def _nothing(data: Datasets) -> None:
    return None


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    run: Callable[[Bench], Measurement]
    # makes the payloads `run` will use, before any measurement (not timed)
    prepare: Callable[[Datasets], None] = _nothing
    # the servers it needs (started before any measurement)
    servers: tuple[str, ...] = ("se", "nginx", "gateway")
    # "repeat": `--repeat` rounds, the median kept; "once": one run after the rounds
    rounds: Literal["repeat", "once"] = "repeat"
    # whether it reads the payloads of `prepare` (the others run after they are removed)
    uses_payload: bool = True
    # which table of latest.md lists it: "upload" (MB/s, CPU-s/GiB per process tree),
    # "ref" (a library alone), "small" (requests/s, latency, CPU per 1000), "none"
    table: Literal["upload", "ref", "small", "none"] = "upload"


# -- one curl upload, measured --------------------------------------------------------


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


MAIN_ROLES = ("se", "nginx", "gateway")


def roles_for(roots: dict[str, int], gateway_role: str) -> dict[str, int]:
    """Server roots with `gateway_role` renamed `gateway` (the gateway on the path) and
    the main gateway renamed `gateway-main` when it is not that one."""
    out: dict[str, int] = {}
    for role, pid in roots.items():
        if role == gateway_role:
            out["gateway"] = pid
        elif role == "gateway":
            out["gateway-main"] = pid
        else:
            out[role] = pid
    return out


def merge_others(values: dict[str, float]) -> dict[str, float]:
    """se, nginx, gateway as they are; every other server summed as `other`."""
    out = {role: values.get(role, 0.0) for role in MAIN_ROLES}
    out["other"] = sum(v for role, v in values.items() if role not in MAIN_ROLES)
    return out


def _check(key: str, what: str, got: object, want: object) -> None:
    if got != want:
        raise RuntimeError(f"{key}: {what} is {got!r}, expected {want!r}")


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
        _check(key, "file_size", reply.get("file_size"), payload.size)
        _check(key, "checksum", reply.get("checksum"), payload.sha256)
    finally:
        bench.stack.delete_stored(reply["file_id"])
    return m


def _gateway_upload(
    bench: Bench, key: str, payload: Dataset, codec: str, gateway_role: str = "gateway"
) -> Measurement:
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
        _check(key, "file_size", reply.get("file_size"), payload.size)
        _check(key, "checksum", reply.get("checksum"), payload.sha256)
        _check(key, "compression_algorithm", reply.get("compression_algorithm"), codec)
        if codec == "none":
            _check(key, "stored_checksum", reply.get("stored_checksum"), payload.sha256)
    finally:
        bench.stack.delete_stored(reply["file_id"])
    m.extra["stored_size"] = reply.get("stored_size")
    m.extra["compression_ratio"] = reply.get("compression_ratio")
    return m


def run_direct(bench: Bench) -> Measurement:
    return _se_upload(bench, "a", f"{bench.stack.se().url}/api/v1/files/upload")


def run_nginx(bench: Bench) -> Measurement:
    return _se_upload(bench, "b", f"{bench.stack.nginx().url}/api/v1/files/upload")


def run_gateway_none(bench: Bench) -> Measurement:
    return _gateway_upload(bench, "c", bench.data.random(), "none")


def run_gateway_zstd(bench: Bench) -> Measurement:
    return _gateway_upload(bench, "d", bench.data.text(), "zstd")


def _random(data: Datasets) -> None:
    data.random()


def _random_form(data: Datasets) -> None:
    data.multipart(data.random())


def _text(data: Datasets) -> None:
    data.text()


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("a", "direct to the SE (multipart POST)", run_direct, _random_form),
        Scenario("b", "nginx -> SE (multipart POST)", run_nginx, _random_form),
        Scenario("c", "gateway -> SE, compression none (raw PUT)", run_gateway_none, _random),
        Scenario("d", "gateway -> SE, zstd on text (raw PUT)", run_gateway_zstd, _text),
    )
}
