"""Drain (issue 11): the time from SIGTERM to exit with 20 uploads in flight, on a gateway
of its own (`INGESTER_SHUTDOWN_GRACE` 5 s) that the scenario starts and stops. Ten
uploads (8 MiB at 4 MB/s) can finish within the grace; ten (64 MiB at 4 MB/s) cannot and
are interrupted after it. Reported, with how each client was answered; afterwards the
SE must hold exactly the files whose clients got 201 (what the drain owed is worked
off by a second process on the same state directory).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.figure import Figure, Reading
from benchmarks.scenario import Bench, Measurement, Scenario
from benchmarks.summary import Summaries
from ingester_gateway.reference import processes

ROOT = Path(__file__).resolve().parent.parent.parent
GRACE_S = 5.0
RATE = 4e6  # bytes/s per upload
SHORT, LONG = 8 * 2**20, 64 * 2**20  # ~2 s and ~16 s at RATE
EACH = 10
SETTLE_S = 30.0


def _loadgen(bench: Bench, url: str, size: int, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    auth = bench.auth_file()
    out = bench.scratch / f"loadgen-{name}.json"
    argv = [
        *(sys.executable, "-m", "benchmarks.loadgen", url, "--auth-file", str(auth)),
        *("--size", str(size), "--concurrency", str(EACH), "--rate", str(RATE)),
        *("--piece", str(64 * 1024), "--timeout", "120"),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with open(out, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, cwd=ROOT, env=env)
    return proc, out


def _until_in_flight(url: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if (
                    line.startswith("ingester_uploads_in_flight ")
                    and float(line.split()[1]) >= count
                ):
                    return
        time.sleep(0.05)
    raise RuntimeError(f"drain: {count} uploads not under way after {timeout:g} s")


def run_drain(bench: Bench) -> Measurement:
    stack = bench.stack
    se = stack.se()
    stored_before = set(stack.stored_ids())
    grace = 1.0 if bench.warm else GRACE_S
    gw = processes.gateway(
        stack.logdir,
        stack.public_key,
        [processes.se_entry(se)],
        env={
            **stack.gateway_env,
            **processes.service_account_env(stack.admin()),  # compensations on an rw SE
            "INGESTER_SHUTDOWN_GRACE": str(grace),
        },
        name="gateway-drain",
    )
    gw.start(timeout=30)
    try:
        clients = [_loadgen(bench, gw.url, size, f"drain-{size}") for size in (SHORT, LONG)]
        _until_in_flight(gw.url, 2 * EACH)
        signalled = time.perf_counter()
        os.killpg(gw.pid, signal.SIGTERM)
        assert gw.process is not None
        gw.process.wait(grace + 60)
        exit_s = time.perf_counter() - signalled
        records: list[dict[str, Any]] = []
        for proc, out in clients:
            proc.wait(180)
            records += json.loads(out.read_text())["results"]
        answers = Counter(str(r.get("status", 0)) for r in records)
        told = {r["reply"]["file_id"] for r in records if r.get("status") == 201}
        # What the drain owed, worked off by the next process on the same state dir.
        gw.start(timeout=30)
        deadline = time.monotonic() + SETTLE_S
        while set(stack.stored_ids()) - stored_before != told and time.monotonic() < deadline:
            time.sleep(0.2)
        unexplained = sorted(set(stack.stored_ids()) - stored_before - told)
        missing = sorted(told - set(stack.stored_ids()))
    finally:
        gw.stop()
    for file_id in set(stack.stored_ids()) - stored_before:
        stack.delete_stored(file_id)
    extra = {
        "grace_s": grace,
        "exit_s": exit_s,
        "answers": dict(answers),
        "unexplained_stored": unexplained,
        "missing_stored": missing,
    }
    if unexplained or missing:
        raise RuntimeError(f"drain: the SE does not hold what clients were told: {extra}")
    return Measurement("drain", 0, exit_s, {}, extra=extra)


SCENARIOS = (
    Scenario(
        "drain",
        "SIGTERM with 20 uploads in flight (a gateway of its own)",
        run_drain,
        servers=("se", "admin"),
        rounds="once",
        uses_payload=False,
        table="none",
    ),
)


def time_to_exit(s: Summaries) -> Reading:
    extra = s["drain"].runs[0].extra
    answers = ", ".join(f"{n} x {status}" for status, n in sorted(extra["answers"].items()))
    return Reading(
        f"drain: seconds from SIGTERM to exit, 20 uploads in flight,"
        f" INGESTER_SHUTDOWN_GRACE {extra['grace_s']:g} s",
        extra["exit_s"],
        None,
        "s",
        kind="absolute",
        note=f"drain: clients answered {answers}; the SE held exactly the 201s' files",
    )


FIGURES = (Figure("drain.exit_s", ("drain",), time_to_exit),)
