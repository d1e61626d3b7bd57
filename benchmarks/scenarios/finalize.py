"""Finalize (issue 8): the random payload (1 GiB by default) is stored as a temporary
file on the edit SE through `gateway-fin` (not measured), then finalized onto the rw
SE: measured from the POST to the transaction's `completed`, the gateway's CPU and
peak RSS sampled meanwhile. Compared with the plain streamed upload of the same bytes
in the same run (c): the copy streams through the same upload core.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from typing import Any

from benchmarks.curl import curl_upload
from benchmarks.datasets import Datasets
from benchmarks.figure import Figure, Reading
from benchmarks.procstat import RssSampler, tree_cpu_seconds
from benchmarks.scenario import Bench, Measurement, Scenario, expect_equal, merge_others, roles_for
from benchmarks.summary import Summaries, human_size

ROLE = "gateway-fin"
FINALIZE_TIMEOUT_S = 600


def _call(url: str, token: str, method: str = "GET") -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        method=method,
        data=b"" if method == "POST" else None,
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def run_finalize(bench: Bench) -> Measurement:
    stack, payload = bench.stack, bench.data.random()
    gw = stack.gateway(ROLE)
    url = f"{gw.url}/api/v1/files/{payload.path.name}?retention_policy=temporary"
    _, stored = curl_upload(
        bench,
        "fin-setup",
        url=url,
        method="PUT",
        body=payload.path,
        content_type=payload.content_type,
        payload=payload,
        gateway_role=ROLE,
    )
    file_id = stored["file_id"]
    expect_equal("fin", "source", stored.get("storage_element_id"), "se-edit")
    roots = roles_for(stack.roots(), ROLE)
    before = {role: tree_cpu_seconds(pid) for role, pid in roots.items()}
    token = stack.user_token
    with RssSampler(roots["gateway"]) as sampler:
        started = time.perf_counter()
        tx = _call(f"{gw.url}/api/v1/finalize/{file_id}", token, "POST")["transaction_id"]
        deadline = time.monotonic() + FINALIZE_TIMEOUT_S
        while True:
            status = _call(f"{gw.url}/api/v1/finalize/{tx}/status", token)
            if status["status"] in ("completed", "failed", "rolled_back"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"fin: no end after {FINALIZE_TIMEOUT_S} s: {status}")
            time.sleep(0.02)
        wall = time.perf_counter() - started
    after = {role: tree_cpu_seconds(pid) for role, pid in roots.items()}
    expect_equal("fin", "status", status["status"], "completed")
    try:
        copy = stack.se_data / "files" / file_id
        expect_equal("fin", "copy's size", copy.stat().st_size, payload.size)
        sha = subprocess.run(["sha256sum", str(copy)], capture_output=True, text=True, check=True)
        expect_equal("fin", "copy's sha256", sha.stdout.split()[0], payload.sha256)
    finally:
        stack.delete_stored(file_id)  # the rw copy; the outbox deletes the source (margin 0)
    return Measurement(
        key="fin",
        payload_bytes=payload.size,
        wall_s=wall,
        cpu_s=merge_others({role: after[role] - before[role] for role in roots}),
        gateway_peak_rss=sampler.peak,
    )


SCENARIOS = (
    Scenario(
        "fin",
        "finalize: edit SE -> gateway -> rw SE, as stored (a temporary file made first)",
        run_finalize,
        Datasets.random,
        servers=("se", "se-edit", "admin", ROLE),
    ),
)


# -- figures ---------------------------------------------------------------------------


def mb_s_vs_upload(s: Summaries) -> Reading:
    fin, c = s["fin"], s["c"]
    return Reading(
        f"8. finalize {human_size(fin.payload_bytes)}, wall MB/s:"
        " finalize (fin) / plain streamed upload (c)",
        fin.mb_s,
        c.mb_s,
        "MB/s",
        chart="finalize MB/s\n/ plain upload",
    )


def peak_rss(s: Summaries) -> Reading | None:
    fin = s["fin"]
    if fin.gateway_peak_rss is None:
        return None
    return Reading(
        f"8. gateway peak RSS during a {human_size(fin.payload_bytes)} finalize (fin)",
        fin.gateway_peak_rss / 2**20,
        None,
        "MiB",
        kind="absolute",
        chart="finalize\npeak RSS",
    )


FIGURES = (
    Figure("finalize.mb_s.finalize_vs_upload", ("fin", "c"), mb_s_vs_upload),
    Figure("finalize.peak_rss", ("fin",), peak_rss),
)
