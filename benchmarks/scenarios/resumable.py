"""Resumable uploads (issue 9): the random payload (1 GiB by default) sent in 64 MiB
PATCHes by one client (`resumable_client.py`: each body from the tmpfs file with
`sendfile`, on one keep-alive connection), in the same rotated rounds:

- tus: tus 1.0 to `gateway-tus` (staging on tmpfs), `Upload-Checksum: sha256 ...` on
  every PATCH; the gateway stores it into the SE meanwhile (it follows an upload of
  known length as its offset grows) and after the last byte.
- tus0: the same to `gateway-tus0`, which stores after the last byte only
  (`INGESTER_TUS_STORE_WHILE_RECEIVING=false`): the PATCHes without a store beside
  them, and the whole store after. Reported: on two shared cores the store (gateway
  and SE) takes CPU from the PATCHes, and tus/tusn against tus0/tusn shows how much.
- tusn: the same PATCHes, without checksum (it has none), to @tus/server 2.4 +
  @tus/file-store under the machine's Node, staging on tmpfs (`tus_node/`): the
  reference of the tus rate. It only stages: nothing is stored anywhere after.
- ietf: the IETF draft (interop 8) to `gateway-ietf`: `POST` with `Upload-Complete: ?0`,
  then `application/partial-upload` PATCHes, `Upload-Complete: ?1` on the last, each
  with `Content-Digest: sha-256` (the draft's per-request checksum, so it does the
  work tus does).

MB/s is from the creation `POST` to the last PATCH's answer; "stored" is from the same
`POST` until `GET /api/v1/uploads/{id}` shows it `stored` with its `file_id` (polled
every 10 ms; the `file_id` alone shows from the store's start), compared with the
streamed raw PUT of the same bytes (c, `passthrough.py`: its 201 comes once stored).
Server CPU is read from /proc over the whole client run (for the gateways: until
stored), the client's over its PATCHes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.datasets import Dataset, Datasets
from benchmarks.figure import Figure, Reading
from benchmarks.procstat import (
    RssSampler,
    hwm_bytes,
    main_thread_share,
    process_tree,
    reset_hwm,
    run_measured,
    thread_cpu_seconds,
    tree_cpu_seconds,
)
from benchmarks.scenario import Bench, Measurement, Scenario, expect_equal, merge_others, roles_for
from benchmarks.summary import Summaries, human_size

ROOT = Path(__file__).resolve().parent.parent.parent
PATCH_SIZE = 64 * 2**20
TUS, TUS0, IETF, NODE = "gateway-tus", "gateway-tus0", "gateway-ietf", "tus-node"


def _client(
    bench: Bench, key: str, role: str, argv: list[str]
) -> tuple[Measurement, dict[str, Any]]:
    """Run the client, measuring every server's CPU, the client's, and the peak RSS of
    the server on the path (`role`, reported as `gateway`)."""
    stack = bench.stack
    roots = roles_for(stack.roots(), role)
    server = roots["gateway"]
    reset_hwm(process_tree(server))
    before = {r: tree_cpu_seconds(pid) for r, pid in roots.items()}
    threads_before = thread_cpu_seconds(server)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out_path = bench.scratch / f"resumable-{key}.json"
    command = [sys.executable, "-m", "benchmarks.resumable_client", *argv]
    with RssSampler(server) as sampler, open(out_path, "wb") as out:
        proc, _, usage = run_measured(command, stdout=out, cwd=ROOT, env=env)
    after = {r: tree_cpu_seconds(pid) for r, pid in roots.items()}
    threads_after = thread_cpu_seconds(server)
    record: dict[str, Any] = json.loads(out_path.read_text() or "{}")
    if proc.returncode != 0 or "error" in record:
        raise RuntimeError(f"{key}: the client failed ({proc.returncode}): {record}")
    cpu = merge_others({r: after[r] - before[r] for r in roots})
    cpu["client"] = record["client_cpu_s"]
    extra = {
        "server": role,
        "patches": record["patches"],
        "patch_size": PATCH_SIZE,
        "stored_s": record.get("stored_s"),
        "polls": record.get("polls"),
        "client_process_cpu_s": usage.ru_utime + usage.ru_stime,
        "client_max_rss_bytes": record["client_max_rss_bytes"],
        "rss_samples": sampler.samples,
        # the event-loop thread of the gateway (for @tus/server: Node's main thread)
        "gateway_loop_cpu_s": main_thread_share(server, threads_before, threads_after),
    }
    m = Measurement(
        key,
        record["size"],
        record["sent_s"],
        cpu,
        gateway_peak_rss=sampler.peak,
        gateway_hwm=hwm_bytes(process_tree(server)),
        extra=extra,
    )
    return m, record


def _gateway_upload(bench: Bench, key: str, role: str, protocol: str) -> Measurement:
    payload = bench.data.random()
    base = bench.stack.gateway(role).url
    argv = [
        f"{base}/api/v1/tus/?compression_algorithm=none",
        str(payload.path),
        *("--protocol", protocol, "--checksum", "--patch-size", str(PATCH_SIZE)),
        *("--auth-file", str(bench.auth_file())),
        *("--metadata", f"filename={payload.path.name}"),
        *("--progress-url", f"{base}/api/v1/uploads/"),
    ]
    m, record = _client(bench, key, role, argv)
    result = record["upload"]["result"]
    try:
        expect_equal(key, "state", record["upload"]["state"], "stored")
        expect_equal(key, "file_size", result.get("file_size"), payload.size)
        expect_equal(key, "checksum", result.get("checksum"), payload.sha256)
        expect_equal(key, "stored_checksum", result.get("stored_checksum"), payload.sha256)
        expect_equal(key, "compression_algorithm", result.get("compression_algorithm"), "none")
    finally:
        bench.stack.delete_stored(result["file_id"])
    return m


def run_tus(bench: Bench) -> Measurement:
    return _gateway_upload(bench, "tus", TUS, "tus")


def run_tus_store_after(bench: Bench) -> Measurement:
    return _gateway_upload(bench, "tus0", TUS0, "tus")


def run_ietf(bench: Bench) -> Measurement:
    return _gateway_upload(bench, "ietf", IETF, "ietf")


def _check_staged(key: str, staged: Path, payload: Dataset) -> None:
    expect_equal(key, "staged size", staged.stat().st_size, payload.size)
    sha = subprocess.run(["sha256sum", str(staged)], capture_output=True, text=True, check=True)
    expect_equal(key, "staged sha256", sha.stdout.split()[0], payload.sha256)


def run_tus_node(bench: Bench) -> Measurement:
    stack, payload = bench.stack, bench.data.random()
    # Started here, not by `Scenario.servers`: a machine without Node skips this
    # scenario (the first call, in the warm-up, starts it before any measurement).
    node = stack.tus_node()
    argv = [
        f"{node.url}/files",
        str(payload.path),
        *("--protocol", "tus", "--patch-size", str(PATCH_SIZE)),
        *("--metadata", f"filename={payload.path.name}"),
    ]
    m, record = _client(bench, "tusn", NODE, argv)
    staged = stack.tus_node_dir / record["upload_path"].rstrip("/").rsplit("/", 1)[-1]
    try:
        _check_staged("tusn", staged, payload)
    finally:
        for leftover in stack.tus_node_dir.iterdir():
            leftover.unlink()
    return m


SCENARIOS = (
    Scenario(
        "tus",
        "tus 1.0 -> gateway -> SE, 64 MiB PATCHes, Upload-Checksum sha256 on each",
        run_tus,
        Datasets.random,
        ("se", TUS),
        table="resumable",
    ),
    Scenario(
        "tus0",
        "tus as above -> a gateway that stores after the last byte only -> SE",
        run_tus_store_after,
        Datasets.random,
        ("se", TUS0),
        table="resumable",
    ),
    Scenario(
        "tusn",
        "tus 1.0 -> @tus/server 2.4 + file-store (Node), 64 MiB PATCHes, staged on tmpfs",
        run_tus_node,
        Datasets.random,
        (),
        table="resumable",
    ),
    Scenario(
        "ietf",
        "IETF draft (interop 8) -> gateway -> SE, 64 MiB PATCHes, Content-Digest on each",
        run_ietf,
        Datasets.random,
        ("se", IETF),
        table="resumable",
    ),
)


# -- figures ---------------------------------------------------------------------------


def mb_s_vs_tus_node(s: Summaries) -> Reading:
    tus, node = s["tus"], s["tusn"]
    return Reading(
        f"9. tus {human_size(tus.payload_bytes)} in 64 MiB PATCHes, MB/s to the last answer:"
        " gateway with sha256 checksums (tus) / @tus/server without (tusn)",
        tus.mb_s,
        node.mb_s,
        "MB/s",
        chart="tus MB/s\ngateway / @tus/server",
    )


def store_after_vs_tus_node(s: Summaries) -> Reading:
    tus0, node = s["tus0"], s["tusn"]
    return Reading(
        "9. the same, the gateway storing after the last byte only (tus0) / @tus/server (tusn)",
        tus0.mb_s,
        node.mb_s,
        "MB/s",
    )


def stored_vs_put(s: Summaries) -> Reading | None:
    stored = s["tus"].extra("stored_s")
    if stored is None:
        return None
    return Reading(
        f"9. tus {human_size(s['tus'].payload_bytes)}: seconds from creation until stored"
        " (tus) / the streamed raw PUT (c)",
        stored,
        s["c"].wall_s,
        "s",
        chart="tus until stored\n/ streamed PUT",
    )


def store_after_stored_vs_put(s: Summaries) -> Reading | None:
    stored = s["tus0"].extra("stored_s")
    if stored is None:
        return None
    return Reading(
        "9. the same, storing after the last byte only (tus0) / the streamed raw PUT (c)",
        stored,
        s["c"].wall_s,
        "s",
    )


def ietf_vs_tus(s: Summaries) -> Reading:
    ietf, tus = s["ietf"], s["tus"]
    return Reading(
        f"9. IETF draft {human_size(ietf.payload_bytes)}, MB/s to the last answer:"
        " draft with Content-Digest (ietf) / tus with Upload-Checksum (tus)",
        ietf.mb_s,
        tus.mb_s,
        "MB/s",
        chart="IETF draft MB/s\n/ tus",
    )


def cpu_vs_tus_node(s: Summaries) -> Reading:
    return Reading(
        "9. tus CPU-s per GiB: gateway until stored, sha256 checks and the SE upload"
        " included (tus) / @tus/server staging only (tusn)",
        s["tus"].cpu_per_gib("gateway"),
        s["tusn"].cpu_per_gib("gateway"),
        "s",
    )


def peak_rss(s: Summaries) -> Reading | None:
    tus = s["tus"]
    if tus.gateway_peak_rss is None:
        return None
    return Reading(
        f"9. gateway peak RSS during a {human_size(tus.payload_bytes)} tus upload until stored"
        " (tus)",
        tus.gateway_peak_rss / 2**20,
        None,
        "MiB",
        kind="absolute",
        chart="tus\npeak RSS",
    )


FIGURES = (
    Figure("resumable.mb_s.tus_vs_tus_node", ("tus", "tusn"), mb_s_vs_tus_node),
    Figure("resumable.mb_s.tus_store_after_vs_tus_node", ("tus0", "tusn"), store_after_vs_tus_node),
    Figure("resumable.stored_s.tus_vs_put", ("tus", "c"), stored_vs_put),
    Figure("resumable.stored_s.tus_store_after_vs_put", ("tus0", "c"), store_after_stored_vs_put),
    Figure("resumable.mb_s.ietf_vs_tus", ("ietf", "tus"), ietf_vs_tus),
    Figure("resumable.cpu.tus_vs_tus_node", ("tus", "tusn"), cpu_vs_tus_node),
    Figure("resumable.peak_rss.tus", ("tus",), peak_rss),
)
