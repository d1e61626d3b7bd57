"""`make bench`: start the servers, make the payloads, run the scenarios, write the
table. Every process started here is stopped and the tmpfs directory removed on
every exit path (error, Ctrl-C, SIGTERM)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from benchmarks.datasets import Datasets
from benchmarks.report import (
    ROLES,
    GiB,
    Machine,
    Summary,
    bar_verdict,
    build_figures,
    figures_table,
    human_size,
    now_iso,
    report_git,
    scenarios_table,
    write_results,
)
from benchmarks.scenarios import SCENARIOS, Bench, Measurement
from benchmarks.stack import BenchStack
from ingester_gateway.config import parse_size

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TMPFS = Path("/dev/shm")
WARMUP_BYTES = 64 * 2**20  # or the payload size when smaller
SETTLE_S = 2.0
PAUSE_S = 0.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Gateway vs direct upload vs nginx, in one run (see benchmarks/README.md).",
    )
    parser.add_argument(
        "--size", default="1GiB", help="payload per upload: bytes or 256MiB, 1GiB ... (1GiB)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per scenario, the median is kept (5)"
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"scenarios to run, comma-separated, of {','.join(SCENARIOS)} (all)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra INGESTER_* setting for the gateway, e.g. INGESTER_BLOCK_SIZE=4MiB",
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="KEYS",
        help="after the measured runs, run these scenarios once more under py-spy",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="with --profile: sample native frames too (uvloop, httptools, hashlib, zstd)",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="where latest.md/.json go"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave results/latest.* alone"
    )
    args = parser.parse_args(argv)
    args.size_bytes = parse_size(args.size)
    if args.size_bytes < 1024:
        parser.error("--size must be at least 1KiB")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.keys = [k.strip() for k in args.only.split(",") if k.strip()]
    args.profile_keys = [k.strip() for k in args.profile.split(",") if k.strip()]
    unknown = [k for k in [*args.keys, *args.profile_keys] if k not in SCENARIOS]
    if unknown or not args.keys:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    env: dict[str, str] = {}
    for item in args.gateway_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("INGESTER_"):
            parser.error(f"--gateway-env wants INGESTER_NAME=VALUE, not {item!r}")
        env[name] = value
    args.env = env
    if args.profile_keys:
        from benchmarks.profile import py_spy

        if py_spy() is None:
            parser.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def say(text: str) -> None:
    print(text, flush=True)


def progress_line(m: Measurement) -> str:
    cells = []
    for role in ROLES:
        cell = f"{role} {m.cpu_per_gib(role):.2f}"
        loop = m.extra.get("gateway_loop_cpu_s")
        if role == "gateway" and loop is not None and m.cpu_per_gib(role) >= 0.1:
            cell += f" (loop {loop * GiB / m.payload_bytes:.2f})"
        cells.append(cell)
    rss = (
        "" if m.gateway_peak_rss is None else f", gateway RSS {m.gateway_peak_rss / 2**20:.0f} MiB"
    )
    return f"{m.key}: {m.mb_s:7.1f} MB/s ({m.wall_s:.2f} s)  CPU-s/GiB {', '.join(cells)}{rss}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if shutil.which("curl") is None:
        say("curl is not installed: run `make system-deps`")
        return 2
    machine = Machine()
    logdir = args.out / "logs"
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True, exist_ok=True)
    base = TMPFS if TMPFS.is_dir() else None
    workdir = Path(tempfile.mkdtemp(prefix="ingester-bench-", dir=base))
    if base is None:
        say(f"warning: {TMPFS} is missing; payloads and SE data go to {workdir}")
    stack: BenchStack | None = None
    try:
        stack = BenchStack(workdir, logdir, args.env)
        return run(args, machine, stack, workdir, logdir)
    except KeyboardInterrupt:
        say("\ninterrupted: stopping the servers")
        return 130
    except Exception:
        traceback.print_exc()
        if stack is not None:
            say(stack.log_tails())
        return 1
    finally:
        if stack is not None:
            stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


def run(
    args: argparse.Namespace, machine: Machine, stack: BenchStack, workdir: Path, logdir: Path
) -> int:
    size = args.size_bytes
    say(f"machine: {machine.lines()[0][2:]}")
    say(f"servers: SE data on {workdir}, logs in {logdir}")
    stack.start_all()
    say(f"  SE {stack.se().url}, nginx {stack.nginx().url}, gateway {stack.gateway().url}")

    data = Datasets(workdir / "payload", size)
    data.directory.mkdir()
    for key in dict.fromkeys([*args.keys, *args.profile_keys]):
        SCENARIOS[key].prepare(data)
    for ds in data.made():
        say(f"payload {ds.name} {human_size(ds.size)}: made in {ds.seconds_to_make:.1f} s")
    made = data.made()
    sha_per_gib = sum(d.sha256_cpu_s for d in made) * GiB / max(1, sum(d.size for d in made))

    warm = Datasets(workdir / "warmup", min(WARMUP_BYTES, size))
    warm.directory.mkdir()
    scratch = workdir / "scratch"
    scratch.mkdir()
    for key in args.keys:  # connections, imports, caches: not part of any figure
        SCENARIOS[key].run(Bench(stack, warm, scratch))
    warm.remove()
    time.sleep(SETTLE_S)  # the payloads were just written: let the kernel catch its breath

    bench = Bench(stack, data, scratch)
    runs: dict[str, list[Measurement]] = {k: [] for k in args.keys}
    for rep in range(args.repeat):
        # Rotate the order each round so no scenario always runs first or after the same one.
        shift = rep % len(args.keys)
        for key in args.keys[shift:] + args.keys[:shift]:
            time.sleep(PAUSE_S)  # let the previous run's tail (frees, logs) settle
            m = SCENARIOS[key].run(bench)
            runs[key].append(m)
            say(f"[{rep + 1}/{args.repeat}] {progress_line(m)}")

    summaries = {k: Summary(k, SCENARIOS[k].title, v) for k, v in runs.items()}
    figures = build_figures(summaries)
    machine.load_after = os.getloadavg()
    settings = {
        "command": " ".join(["benchmarks/run.py", *(shlex.quote(a) for a in sys.argv[1:])]),
        "started_at": now_iso(),
        "git": report_git(ROOT),
        "size": size,
        "repeat": args.repeat,
        "scenarios": args.keys,
        "gateway_env": stack.gateway_env,
        "payload": "tmpfs file read by curl on stdin (-T -), chunked",
        "sha256_cpu_s_per_gib": sha_per_gib,
    }

    say("\n" + scenarios_table(summaries) + "\n")
    say(figures_table(figures) + "\n")
    c, a, b = summaries.get("c"), summaries.get("a"), summaries.get("b")
    if c and b:
        say(f"c/b = {c.mb_s / b.mb_s:.2f}   (gateway / nginx, wall MB/s)")
    if c and a:
        say(f"c/a = {c.mb_s / a.mb_s:.2f}   (gateway / direct, wall MB/s)")
    verdict = bar_verdict(figures, "issue 2")
    say(
        "bar of issue 2 (c/b >= 0.4, gateway peak RSS <= 100 MiB): "
        + {None: "not measured (needs b and c)", True: "MET", False: "NOT MET"}[verdict]
    )
    if not args.no_write:
        md, js = write_results(args.out, summaries, figures, machine, settings)
        say(f"wrote {md.relative_to(ROOT) if md.is_relative_to(ROOT) else md} and {js.name}")

    for key in args.profile_keys:
        from benchmarks.profile import Profiler, summarize

        raw = logdir / f"profile-{key}.txt"
        say(f"\nprofiling {key} with py-spy (extra run, not in the figures) -> {raw}")
        with Profiler(stack.gateway().pid, raw, native=args.profile_native):
            SCENARIOS[key].run(bench)
        with contextlib.suppress(FileNotFoundError):
            summary = summarize(raw)
            (logdir / f"profile-{key}.summary.txt").write_text(summary + "\n")
            say(summary)
    return 0
