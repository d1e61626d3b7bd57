"""Many small multipart uploads from concurrent clients, driven by wrk (the client of
the small-file scenarios, `scenarios/small_files.py`).

`wrk -t T -c 64 -s small_files.lua URL -- TOKENS COUNT SIZE T`: 64 keep-alive
connections, each request a 4 KiB multipart upload with one of 64 distinct JWTs
(rotated), each wrk thread stopping itself after its share of COUNT responses.

wrk has no "stop after N requests" of its own: its main thread sleeps for `-d`
whatever its threads do. So the run is given a long `-d`, the harness watches
`/proc/<wrk>/task` and, once every worker thread has stopped (only the main thread
is left), notes the time and sends SIGINT, on which wrk prints its latency
histogram and calls the script's `done()` (one `RESULT {json}` line).

A thread stops when it has its share of responses; requests still in flight on its
other connections are abandoned by wrk but usually completed by the server (at most
`connections - 1` per run). So server CPU is divided by the uploads the SE actually
stored (counted in its data directory once it has settled), and requests/s by the
201 responses wrk counted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.procstat import tree_cpu_seconds
from benchmarks.scenario import Bench, Measurement

LUA = Path(__file__).resolve().parent / "small_files.lua"
SETTLE_S = 0.5
WRK_TIMEOUT_S = 900


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def _settled_count(bench: Bench, quiet_s: float = SETTLE_S, timeout: float = 30.0) -> int:
    """The SE's stored-file count once it has not changed for `quiet_s`."""
    deadline = time.monotonic() + timeout
    last = len(bench.stack.stored_ids())
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = len(bench.stack.stored_ids())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def run_wrk(bench: Bench, key: str, server_role: str, url: str) -> Measurement:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: run `make system-deps` (Debian package wrk)")
    opts = bench.opts
    count = min(opts.small_count, 1000) if bench.warm else opts.small_count
    threads = max(1, min(opts.small_threads, opts.small_connections))
    stack = bench.stack
    tokens = bench.scratch / "small-tokens.txt"
    if not tokens.exists():
        fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(stack.user_tokens(opts.small_connections)) + "\n")
    argv = [
        wrk,
        *("-t", str(threads), "-c", str(opts.small_connections)),
        *("-d", "3600s", "--timeout", "60s", "-s", str(LUA)),
        url,
        "--",
        *(str(tokens), str(count), str(opts.small_size), str(threads)),
    ]
    roots = stack.roots()
    stored_before = len(stack.stored_ids())
    before = {role: tree_cpu_seconds(pid) for role, pid in roots.items()}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WRK_TIMEOUT_S
        seen_threads = False
        while time.monotonic() < deadline and proc.poll() is None:
            n = _threads(proc.pid)
            if n > 1:
                seen_threads = True
            elif seen_threads and n == 1:
                break  # every worker thread has stopped itself
            time.sleep(0.01)
        else:
            raise RuntimeError(f"{key}: wrk did not finish within {WRK_TIMEOUT_S} s")
        wall = time.perf_counter() - started
        proc.send_signal(signal.SIGINT)  # wrk prints its histogram, runs done(), exits
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    text = out.decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{key}: no RESULT line from wrk:\n{text[-2000:]}")
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    stored = _settled_count(bench) - stored_before
    after = {role: tree_cpu_seconds(pid) for role, pid in roots.items()}
    cpu = {role: after[role] - before[role] for role in roots}
    cpu["client"] = usage.ru_utime + usage.ru_stime  # wrk
    deleted = stack.delete_all_stored()
    if result["created"] == 0:
        raise RuntimeError(f"{key}: no upload succeeded: {result}")
    lat = result["latency_us"]
    per_1000 = {role: v / max(1, stored) * 1000 for role, v in cpu.items()}
    extra: dict[str, Any] = {
        "server": server_role,
        "url": url,
        "count": count,
        "connections": opts.small_connections,
        "tokens": opts.small_connections,
        "wrk_threads": threads,
        "file_size": opts.small_size,
        "created": result["created"],
        "non_201": result["non_201"],
        "first_non_201": result["first_non_201"],
        "socket_errors": result["errors"],
        "stored": stored,
        "deleted_after": deleted,
        "requests_per_s": result["created"] / wall,
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p999"] / 1000,
        "max_ms": lat["max"] / 1000,
        "cpu_per_1000_s": per_1000,
        # the server under test: its whole process tree (uvicorn supervisor and workers,
        # or nginx master and worker)
        "server_cpu_per_1000_s": per_1000[server_role],
    }
    return Measurement(key, stored * opts.small_size, wall, cpu, extra=extra)
