"""`make bench`: start the servers, make the payloads, run the scenarios, write the
table. Every process started here is stopped and the tmpfs directory removed on
every exit path (error, Ctrl-C, SIGTERM)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from benchmarks.catalogue import FIGURES, SCENARIOS
from benchmarks.datasets import Datasets
from benchmarks.figure import compute_figures
from benchmarks.machine import Machine, report_git
from benchmarks.render import figures_table, progress_line, scenario_tables, targets_line
from benchmarks.results import write_results
from benchmarks.scenario import Bench, Measurement, Options, Skipped
from benchmarks.stack import GATEWAY_VARIANTS, BenchStack, zstd_threads_supported
from benchmarks.summary import GiB, Summary, human_size
from benchmarks.targets import judge
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
        description="The gateway beside every reference, in one run (see benchmarks/README.md).",
    )
    parser.add_argument(
        "--size",
        default=None,
        help="payload of the 1 GiB uploads and references: bytes or 256MiB, 1GiB ... (1GiB)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="rounds of the repeated scenarios, the median is kept (5)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"scenarios to run, comma-separated, of {','.join(SCENARIOS)} (all)",
    )
    parser.add_argument("--skip", default="", help="scenarios to leave out, comma-separated")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: every size shrunk (64MiB, 1 round, 2000 small files, 512MiB big"
        " upload, 100 x 8MiB, 20MiB paced); explicit options still win",
    )
    o = Options()
    parser.add_argument(
        "--small-count", type=int, default=None, help=f"4 KiB uploads per server ({o.small_count})"
    )
    parser.add_argument(
        "--small-connections",
        type=int,
        default=o.small_connections,
        help=f"concurrent wrk connections, one JWT each ({o.small_connections})",
    )
    parser.add_argument(
        "--small-threads",
        type=int,
        default=o.small_threads,
        help=f"wrk threads ({o.small_threads})",
    )
    parser.add_argument("--big-size", default=None, help="the one big upload (10GiB)")
    parser.add_argument(
        "--concurrent", type=int, default=None, help=f"concurrent uploads ({o.concurrent})"
    )
    parser.add_argument("--concurrent-size", default=None, help="each concurrent upload (100MiB)")
    parser.add_argument("--stream-size", default=None, help="the paced upload (200MiB)")
    parser.add_argument(
        "--stream-rate", type=float, default=o.stream_rate, help="paced client, bytes/s (20e6)"
    )
    parser.add_argument(
        "--jwt-count", type=int, default=None, help=f"token verifications ({o.jwt_count})"
    )
    parser.add_argument(
        "--edge-connections",
        type=int,
        default=None,
        help=f"connections holding half a head ({o.edge_connections})",
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
        "--src",
        default=None,
        metavar="REV",
        help="run every server from `git archive REV src` (exported to tmpfs) instead of the"
        " working tree: benchmark committed code while src/ is being edited",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="where latest.md/.json go"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave results/latest.* alone"
    )
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: str | int | None, full: str | int, small: str | int) -> str | int:
        return value if value is not None else (small if quick else full)

    try:
        args.size_bytes = parse_size(str(pick(args.size, "1GiB", "64MiB")))
        args.opts = Options(
            small_count=int(pick(args.small_count, o.small_count, 2000)),
            small_connections=args.small_connections,
            small_threads=args.small_threads,
            big_size=parse_size(str(pick(args.big_size, "10GiB", "512MiB"))),
            concurrent=int(pick(args.concurrent, o.concurrent, 100)),
            concurrent_size=parse_size(str(pick(args.concurrent_size, "100MiB", "8MiB"))),
            stream_size=parse_size(str(pick(args.stream_size, "200MiB", "20MiB"))),
            stream_rate=args.stream_rate,
            jwt_count=int(pick(args.jwt_count, o.jwt_count, 500)),
            edge_connections=int(pick(args.edge_connections, o.edge_connections, 500)),
        )
    except ValueError as exc:
        parser.error(str(exc))
    args.repeat = int(pick(args.repeat, 5, 1))
    if args.size_bytes < 1024:
        parser.error("--size must be at least 1KiB")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.opts.small_count < 1 or args.opts.small_connections < 1:
        parser.error("--small-count and --small-connections must be at least 1")
    skip = {k.strip() for k in args.skip.split(",") if k.strip()}
    args.keys = [k.strip() for k in args.only.split(",") if k.strip() and k.strip() not in skip]
    args.profile_keys = [k.strip() for k in args.profile.split(",") if k.strip()]
    unknown = [k for k in [*args.keys, *args.profile_keys, *skip] if k not in SCENARIOS]
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


def export_src(rev: str, into: Path) -> str:
    """`git archive REV src` into `into`; every process started from now on imports
    `ingester_gateway` from there (PYTHONPATH comes before the editable install)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", sha, "src"], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {rev} failed")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(into / "src") + (os.pathsep + old if old else "")
    return f"src of {rev} ({sha}), exported"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def say(text: str) -> None:
    print(text, flush=True)


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
        if args.src:
            args.src_label = export_src(args.src, workdir / "src-export")
            say(f"servers run from {args.src_label}")
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


def _roles(keys: list[str]) -> list[str]:
    return [role for key in keys for role in SCENARIOS[key].servers]


def run(
    args: argparse.Namespace, machine: Machine, stack: BenchStack, workdir: Path, logdir: Path
) -> int:
    started = time.monotonic()
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    size = args.size_bytes
    opts: Options = args.opts
    keys: list[str] = args.keys
    say(f"machine: {machine.lines()[0][2:]}")
    say(f"servers: SE data on {workdir}, logs in {logdir}")
    stack.start(["se", *_roles([*keys, *args.profile_keys])])
    say("  " + ", ".join(f"{role} {server.url}" for role, server in stack.servers().items()))
    if "gateway-zt2" in _roles(keys) and not zstd_threads_supported():
        say("note: this tree's Settings has no zstd_threads: d2 runs single-threaded")

    data = Datasets(workdir / "payload", size)
    data.directory.mkdir()
    for key in dict.fromkeys([*keys, *args.profile_keys]):
        SCENARIOS[key].prepare(data)
    for ds in data.made():
        say(f"payload {ds.name} {human_size(ds.size)}: made in {ds.seconds_to_make:.1f} s")
    made = data.made()
    sha_per_gib = sum(d.sha256_cpu_s for d in made) * GiB / max(1, sum(d.size for d in made))

    scratch = workdir / "scratch"
    scratch.mkdir()
    warm = Datasets(workdir / "warmup", min(WARMUP_BYTES, size))
    warm.directory.mkdir()
    for key in keys:
        SCENARIOS[key].prepare(warm)
    skipped: dict[str, str] = {}

    def attempt(key: str, target: Bench) -> Measurement | None:
        """Run one scenario; None (and a note) when it cannot run here and now."""
        if key in skipped:
            return None
        try:
            return SCENARIOS[key].run(target)
        except Skipped as exc:
            skipped[key] = str(exc)
            say(f"skipped {key}: {exc}")
            return None

    say("warming up every path (not measured)")
    for key in keys:  # connections, imports, caches: not part of any figure
        attempt(key, Bench(stack, warm, scratch, opts, warm=True))
    for key in list(skipped):  # the real size gets its own chance
        del skipped[key]
    warm.remove()
    time.sleep(SETTLE_S)  # the payloads were just written: let the kernel catch its breath

    bench = Bench(stack, data, scratch, opts)
    runs: dict[str, list[Measurement]] = {k: [] for k in keys}
    repeated = [k for k in keys if SCENARIOS[k].rounds == "repeat"]
    for rep in range(args.repeat if repeated else 0):
        # Rotate the order each round so no scenario always runs first or after the same one.
        shift = rep % len(repeated)
        for key in repeated[shift:] + repeated[:shift]:
            time.sleep(PAUSE_S)  # let the previous run's tail (frees, logs) settle
            if (m := attempt(key, bench)) is not None:
                runs[key].append(m)
                say(f"[{rep + 1}/{args.repeat}] {progress_line(m)}")

    once = [k for k in keys if SCENARIOS[k].rounds == "once"]
    for key in [k for k in once if SCENARIOS[k].uses_payload]:
        time.sleep(PAUSE_S)
        if (m := attempt(key, bench)) is not None:
            runs[key].append(m)
            say(f"[once] {progress_line(m)}")

    for key in args.profile_keys:
        from benchmarks.profile import Profiler, summarize

        raw = logdir / f"profile-{key}.txt"
        say(f"\nprofiling {key} with py-spy (extra run, not in the figures) -> {raw}")
        # the scenario's own gateway instance (gateway-tus, gateway-otel, ...)
        role = next((r for r in SCENARIOS[key].servers if r.startswith("gateway")), "gateway")
        with Profiler(stack.gateway(role).pid, raw, native=args.profile_native):
            SCENARIOS[key].run(bench)
        with contextlib.suppress(FileNotFoundError):
            hot = summarize(raw)
            (logdir / f"profile-{key}.summary.txt").write_text(hot + "\n")
            say(hot)

    data.remove()  # the rest makes its bytes on the fly; free tmpfs for what the SE stores
    for key in [k for k in once if not SCENARIOS[k].uses_payload]:
        time.sleep(PAUSE_S)
        if (m := attempt(key, bench)) is not None:
            runs[key].append(m)
            say(f"[once] {progress_line(m)}")

    summaries = {
        k: Summary(k, SCENARIOS[k].title, v, SCENARIOS[k].table) for k, v in runs.items() if v
    }
    rows = judge(compute_figures(FIGURES, summaries))
    machine.load_after = os.getloadavg()
    settings = {
        "command": " ".join(["benchmarks/run.py", *(shlex.quote(a) for a in sys.argv[1:])]),
        "started_at": started_at,
        "git": getattr(args, "src_label", None) or report_git(ROOT),
        "size": size,
        "repeat": args.repeat,
        "scenarios": keys,
        "options": dataclasses.asdict(opts),
        "gateway_env": stack.gateway_env,
        "gateway_variants": {k: v for k, v in GATEWAY_VARIANTS.items() if v},
        "zstd_threads_supported": zstd_threads_supported(),
        "payload": "tmpfs file read by curl on stdin (-T -), chunked",
        "sha256_cpu_s_per_gib": sha_per_gib,
        "run_minutes": (time.monotonic() - started) / 60,
        "skipped": skipped,
    }

    for _, table in scenario_tables(summaries, settings["options"]):
        say("\n" + table)
    say("\n" + figures_table(rows) + "\n")
    say(targets_line(rows))
    for key, reason in skipped.items():
        say(f"skipped {key}: {reason}")
    say(f"run took {settings['run_minutes']:.1f} min")
    if not args.no_write:
        titles = {key: declared.title for key, declared in SCENARIOS.items()}
        md, js, png = write_results(args.out, summaries, rows, machine, settings, titles)
        shown = md.relative_to(ROOT) if md.is_relative_to(ROOT) else md
        say(f"wrote {shown}, {js.name}" + (f" and {png.name}" if png else " (nothing to chart)"))
    return 0
