"""`make soak`: a bounded soak of the gateway against real processes, on loopback.

    .venv/bin/python benchmarks/soak.py [--duration 300] [--clients 8] [--rate 10MiB] ...

Starts a redis-server, the reference Admin Module (file registry, and the SE list it
publishes in Redis), N reference Storage Elements (data on /dev/shm) and one gateway
registered with the Admin Module (`INGESTER_REGISTRY=artstore`, uploads registered).
For `--duration` seconds, `--clients` users send mixed uploads (`soak_traffic.py`:
raw PUT, multipart POST, tus; bytes to tens of MiB; clients that vanish mid-body, slow
and stalled ones) while SEs are restarted gracefully, one after another, and one is
SIGKILLed and started again. Then it lets the gateway drain (uploads in flight, the
outbox: registrations, compensations, tus stores) and accounts for every file
(`soak_audit.py`): orphans on the SEs, stored files missing from the registry, and
what the clients were told. Prints a summary, writes
`benchmarks/results/soak-<timestamp>.json`, and exits 1 when any upload failed or any
file is unaccounted for (0: all clean). Every process it started is stopped at the end,
also on an error or Ctrl-C, and its tmpfs directory removed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks`

import aiohttp
import redis
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.machine import report_git
from benchmarks.procstat import process_tree, rss_bytes
from benchmarks.soak_audit import Accounting, account, read_registry, read_se
from benchmarks.soak_traffic import KINDS, Client, Outcome, Pace, Payloads, draw_size
from ingester_gateway.config import parse_size
from ingester_gateway.outbox.jobs import KINDS as OUTBOX_KINDS
from ingester_gateway.outbox.queue import since_key
from ingester_gateway.reference import processes
from ingester_gateway.reference.processes import ServerProcess
from ingester_gateway.reference.tokens import generate_keypair, mint_token

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TMPFS = Path("/dev/shm")
MiB = 2**20
IDLE_BEFORE_MEASURE = 2.0  # seconds idle before RSS is read (the gateway trims after 1 s)
RESULTS = ("ok", "refused", "failed", "abandoned")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/soak.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic (300)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent users (8)")
    parser.add_argument(
        "--storage-elements", type=int, default=3, help="reference SEs, at least 2 (3)"
    )
    parser.add_argument(
        "--rate", default="10MiB", help="bytes offered per second over all clients (10MiB)"
    )
    parser.add_argument("--max-size", default="40MiB", help="largest upload (40MiB)")
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=5.0,
        help="the gateway's INGESTER_CLIENT_BODY_TIMEOUT_SECONDS: stalled clients wait it out (5)",
    )
    parser.add_argument(
        "--down", type=float, default=2.0, help="seconds the SIGKILLed SE stays down (2)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds to wait for the drain (120)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=30.0,
        help="seconds of the same traffic before the start figures are read (30)",
    )
    parser.add_argument("--seed", type=int, default=None, help="of the traffic's choices")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra INGESTER_* setting for the gateway (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="where soak-<time>.json goes"
    )
    args = parser.parse_args(argv)
    try:
        args.rate_bytes = parse_size(args.rate)
        args.max_size_bytes = parse_size(args.max_size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.duration <= 0 or args.clients < 1 or args.storage_elements < 2:
        parser.error("--duration > 0, --clients >= 1 and --storage-elements >= 2")
    if args.max_size_bytes < 1024 or args.rate_bytes < 1:
        parser.error("--max-size must be at least 1KiB, --rate positive")
    env: dict[str, str] = {}
    for item in args.gateway_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("INGESTER_"):
            parser.error(f"--gateway-env wants INGESTER_NAME=VALUE, not {item!r}")
        env[name] = value
    args.env = env
    if args.seed is None:
        args.seed = random.randrange(2**32)
    return args


def say(text: str) -> None:
    print(text, flush=True)


# -- the processes ---------------------------------------------------------------------------


class SoakStack:
    """Redis, the Admin Module, the SEs and the gateway; `close()` stops what runs."""

    def __init__(
        self, workdir: Path, logdir: Path, se_count: int, body_timeout: float, env: dict[str, str]
    ) -> None:
        self.workdir = workdir
        private, public = generate_keypair(workdir / "keys")
        self.pem = private.read_bytes()
        self.redis = processes.redis_server(logdir)
        self.redis_url = f"redis://127.0.0.1:{self.redis.port}/0"
        self.ses = [
            processes.storage_element(
                logdir,
                public,
                element_id=f"se-{n}",
                capacity="1TiB",
                data_dir=workdir / f"se-{n}-data",
            )
            for n in range(1, se_count + 1)
        ]
        self.admin = processes.admin_module(
            logdir,
            private,
            redis_url=self.redis_url,
            storage_elements=self.ses,
            poll_interval=0.5,
            db=workdir / "admin.db",
        )
        gateway_env = {
            "INGESTER_REGISTRY": "artstore",
            "INGESTER_REDIS_URL": self.redis_url,
            "INGESTER_REGISTRY_REFRESH_SECONDS": "0.5",
            "INGESTER_ADMIN_URL": self.admin.url,
            **processes.service_account_env(self.admin),
            "INGESTER_WORKERS": "1",
            "INGESTER_STATE_DIR": str(workdir / "gateway-state"),
            "INGESTER_CLIENT_BODY_TIMEOUT_SECONDS": str(body_timeout),
            **env,
        }
        self.gateway = processes.gateway(logdir, public, [], env=gateway_env)
        self._started: list[ServerProcess] = []

    def start(self) -> None:
        """Redis; the SEs and the Admin Module side by side (it lists each SE once it
        answers); the gateway once they are all up."""
        for group in ([self.redis], [*self.ses, self.admin], [self.gateway]):
            self._started += group
            with concurrent.futures.ThreadPoolExecutor(len(group)) as pool:
                list(pool.map(lambda server: server.start(timeout=30), group))

    def se_data(self, se: ServerProcess) -> Path:
        return self.workdir / f"{se.name}-data"

    def server_ports(self) -> dict[int, str]:
        """port -> name of every server the gateway talks to."""
        ports = {se.port: se.name for se in self.ses}
        return ports | {self.redis.port: "redis", self.admin.port: "admin-module"}

    def user_token(self, n: int) -> str:
        return mint_token(self.pem, sub=f"soak-{n:02d}", role="user", ttl=24 * 3600)

    def close(self) -> None:
        for server in reversed(self._started):
            with contextlib.suppress(Exception):
                server.stop()


# -- what the gateway process uses -----------------------------------------------------------


@dataclass
class Usage:
    at: float
    rss_bytes: int
    open_fds: int


def gateway_usage(gateway: ServerProcess, at: float) -> Usage:
    pids = process_tree(gateway.pid)
    fds = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fds += len(os.listdir(f"/proc/{pid}/fd"))
    return Usage(at, rss_bytes(pids), fds)


def _tcp_peers(pid: int) -> dict[str, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) of the process's TCP sockets."""
    peers = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = row.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                peers[inode] = (
                    int(local.rsplit(":", 1)[1], 16),
                    int(remote.rsplit(":", 1)[1], 16),
                    state,
                )
    return peers


def open_fds_by_kind(gateway: ServerProcess, servers: dict[int, str]) -> dict[str, int]:
    """What the gateway's descriptors are: connections by the server they go to
    (`servers`: port -> name), client connections, the listening socket, files, pipes,
    other kernel objects (epoll, eventfd)."""
    counts: dict[str, int] = {}
    for pid in process_tree(gateway.pid):
        peers = _tcp_peers(pid)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    local, remote, state = peers.get(target[8:-1], (0, 0, ""))
                    if state == "0A":
                        kind = "listening"
                    elif local == gateway.port:
                        kind = "clients"
                    elif remote in servers:
                        kind = f"to {servers[remote]}"
                    else:
                        kind = "other sockets"
                elif target.startswith("pipe:"):
                    kind = "pipes"
                elif target.startswith("/"):
                    kind = "files"
                else:
                    kind = target.split(":", 1)[-1].strip("[]")  # eventpoll, eventfd, ...
                counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def scrape(gateway: ServerProcess) -> dict[str, float]:
    """name -> sum of its samples over every label, from the live /metrics."""
    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def outbox_backlog(redis_url: str) -> int:
    """Durable jobs of every kind not done yet, as Redis holds them."""
    with redis.Redis.from_url(redis_url, socket_timeout=5) as db:
        return sum(int(db.zcard(since_key(kind))) for kind in OUTBOX_KINDS)


# -- disruptions -----------------------------------------------------------------------------


@dataclass
class Disruption:
    at: float  # seconds into the soak
    action: str  # "restart" (SIGTERM, start again) or "kill" (SIGKILL, down, start again)
    se: str
    stop_exit: int | None = None  # the SE's exit status (-9: SIGKILLed)
    stop_seconds: float = 0.0  # from the signal to the process gone
    back_seconds: float = 0.0  # from the signal to the SE ready again


def disruption_plan(duration: float, ses: list[ServerProcess]) -> list[Disruption]:
    """Five, evenly spread: graceful restarts rotating over the SEs, the fourth a SIGKILL."""
    return [
        Disruption(duration * k / 6, "kill" if k == 4 else "restart", ses[(k - 1) % len(ses)].name)
        for k in range(1, 6)
    ]


async def disrupt(
    stack: SoakStack, plan: list[Disruption], began: float, down: float, log: list[str]
) -> None:
    by_name = {se.name: se for se in stack.ses}
    for step in plan:
        await asyncio.sleep(max(0.0, began + step.at - time.monotonic()))
        se = by_name[step.se]
        signalled = time.monotonic()
        await asyncio.to_thread(se.kill if step.action == "kill" else se.stop)
        step.stop_seconds = time.monotonic() - signalled
        step.stop_exit = se.process.returncode if se.process is not None else None
        if step.action == "kill":
            await asyncio.sleep(down)
        await asyncio.to_thread(se.start, 30.0)
        step.back_seconds = time.monotonic() - signalled
        log.append(
            f"  t={signalled - began:6.1f}s {step.action:7s} {step.se}: stopped in"
            f" {step.stop_seconds:.1f}s (exit {step.stop_exit}), ready after"
            f" {step.back_seconds:.1f}s"
        )
        say(log[-1])


# -- traffic ---------------------------------------------------------------------------------


async def client_loop(
    client: Client,
    pace: Pace,
    until: float,
    began: float,
    max_size: int,
    outcomes: list[Outcome],
) -> None:
    names, weights = list(KINDS), list(KINDS.values())
    while time.monotonic() < until:
        kind = client.rng.choices(names, weights)[0]
        size = 0 if kind == "empty" else draw_size(client.rng, max_size)
        await pace.take(size)
        at = time.monotonic() - began
        outcome = await client.upload(kind, size)
        outcome.at = at
        outcomes.append(outcome)


async def sample_usage(gateway: ServerProcess, began: float, into: list[Usage]) -> None:
    while True:
        with contextlib.suppress(OSError, ValueError):
            into.append(gateway_usage(gateway, time.monotonic() - began))
        await asyncio.sleep(1.0)


async def drain(stack: SoakStack, timeout: float) -> dict[str, Any]:
    """Wait until no upload is in flight and the outbox is empty, twice in a row a
    second apart; what was seen."""
    started = time.monotonic()
    quiet = 0
    seen: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        metrics = await asyncio.to_thread(scrape, stack.gateway)
        seen = {
            "uploads_in_flight": metrics.get("ingester_uploads_in_flight", 0.0),
            "outbox_jobs_gauge": metrics.get("ingester_outbox_jobs", 0.0),
            "outbox_jobs_redis": await asyncio.to_thread(outbox_backlog, stack.redis_url),
        }
        quiet = quiet + 1 if not any(seen.values()) else 0
        if quiet >= 2:
            break
        await asyncio.sleep(1.0)
    seen["drained"] = quiet >= 2
    seen["seconds"] = round(time.monotonic() - started, 1)
    return seen


async def traffic(
    args: argparse.Namespace,
    stack: SoakStack,
    payloads: Payloads,
    pace: Pace,
    first_client: int,
    until: float,
    began: float,
    outcomes: list[Outcome],
    disruptions: Awaitable[None] | None = None,
) -> None:
    """`args.clients` users (numbered from `first_client`) on a session of their own,
    uploading until `until`; the session is closed when they are done."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=150)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        clients = [
            Client(
                n,
                session,
                stack.gateway.url,
                stack.user_token(n),
                payloads,
                args.body_timeout,
                args.seed + n,
            )
            for n in range(first_client, first_client + args.clients)
        ]
        loops = [client_loop(c, pace, until, began, args.max_size_bytes, outcomes) for c in clients]
        await asyncio.gather(*loops, *([disruptions] if disruptions is not None else []))


async def soak(args: argparse.Namespace, stack: SoakStack) -> dict[str, Any]:
    payloads = Payloads(args.max_size_bytes, args.seed)
    pace = Pace(args.rate_bytes)
    outcomes: list[Outcome] = []
    usage: list[Usage] = []
    log: list[str] = []
    servers = stack.server_ports()
    warm_began = time.monotonic()
    say(f"warm-up: {args.warmup:g} s of the same traffic, no disruption")
    # Every path taken and the allocator grown before the start figures are read, so that
    # start and end compare like with like.
    await traffic(args, stack, payloads, pace, 100, warm_began + args.warmup, warm_began, outcomes)
    await asyncio.sleep(IDLE_BEFORE_MEASURE)
    start_usage = gateway_usage(stack.gateway, 0.0)
    start_fds = open_fds_by_kind(stack.gateway, servers)
    began = time.monotonic()
    for warm in outcomes:  # counted with the rest; `at` < 0 says when
        warm.at -= began - warm_began
    plan = disruption_plan(args.duration, stack.ses)
    say(f"traffic for {args.duration:g} s; disruptions:")
    sampler = asyncio.create_task(sample_usage(stack.gateway, began, usage))
    chaos = disrupt(stack, plan, began, args.down, log)
    await traffic(args, stack, payloads, pace, 0, began + args.duration, began, outcomes, chaos)
    traffic_seconds = time.monotonic() - began
    say(f"traffic done after {traffic_seconds:.1f} s; draining")
    drained = await drain(stack, args.drain_timeout)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    await asyncio.sleep(IDLE_BEFORE_MEASURE)
    alive = stack.gateway.process is not None and stack.gateway.process.poll() is None
    end_usage = gateway_usage(stack.gateway, time.monotonic() - began) if alive else None
    return {
        "outcomes": outcomes,
        "plan": plan,
        "drain": drained,
        "traffic_seconds": traffic_seconds,
        "start_usage": start_usage,
        "end_usage": end_usage,
        "start_fds": start_fds,
        "end_fds": open_fds_by_kind(stack.gateway, servers) if alive else None,
        "usage": usage,
        "gateway_alive": alive,
    }


# -- figures ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def per_kind(outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for kind in [*KINDS, "total"]:
        mine = [o for o in outcomes if kind in ("total", o.kind)]
        if not mine:
            continue
        ok_seconds = sorted(o.seconds for o in mine if o.result == "ok")
        row: dict[str, Any] = {"uploads": len(mine)}
        row |= {r: sum(1 for o in mine if o.result == r) for r in RESULTS}
        row["mib"] = sum(o.size for o in mine) / MiB
        for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
            value = percentile(ok_seconds, q)
            row[name] = None if value is None else value * 1000
        row["max_ms"] = ok_seconds[-1] * 1000 if ok_seconds else None
        rows[kind] = row
    return rows


def tally(outcomes: list[Outcome], result: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        if o.result == result:
            key = f"{o.status} {o.code}" if result == "refused" else f"{o.kind}: {o.code}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def gateway_log_errors(gateway: ServerProcess) -> list[str]:
    """The gateway's log lines at level error or above (JSON logs), or a traceback."""
    found = []
    assert gateway.log_path is not None
    for line in gateway.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if line.startswith("Traceback"):
                found.append(line)
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical"):
            found.append(str(record.get("event")))
    return found


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{'kind':15s} {'uploads':>7s} {'ok':>6s} {'refused':>7s} {'failed':>6s}"
        f" {'abandoned':>9s} {'MiB':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}"
    ]
    for kind, row in report["kinds"].items():
        lines.append(
            f"{kind:15s} {row['uploads']:7d} {row['ok']:6d} {row['refused']:7d}"
            f" {row['failed']:6d} {row['abandoned']:9d} {row['mib']:8.1f}"
            f" {_ms(row['p50_ms']):>8s} {_ms(row['p99_ms']):>8s} {_ms(row['max_ms']):>8s}"
        )
    refused = ", ".join(f"{k} x{n}" for k, n in report["refused_by_code"].items()) or "none"
    lines.append(f"refused: {refused}")
    failed = report["failed_by_reason"]
    lines.append("failed: " + ("none" if not failed else ""))
    lines += [f"  {n} x {k}" for k, n in list(failed.items())[:15]]
    acc = report["accounting"]
    lines.append(
        f"files: told {acc['told']}, on the SEs {acc['stored']}, registered {acc['registered']}"
        f" | orphans {acc['orphans']}, unregistered {acc['unregistered']}, missing"
        f" {acc['missing']}, unclaimed {acc['unclaimed']}, dangling {acc['dangling']},"
        f" misplaced {acc['misplaced']}, duplicated {acc['duplicated']}, bare {acc['bare']}"
    )
    lines.append(
        "SEs: "
        + ", ".join(
            f"{se['element_id']} {se['files']} files, {se['partials']} partials"
            for se in report["storage_elements"]
        )
    )
    gw = report["gateway"]
    start, end = gw["start"], gw["end"]
    if end is None:
        lines.append("gateway: NOT RUNNING at the end")
    else:
        lines.append(
            f"gateway: RSS {start['rss_bytes'] / MiB:.1f} -> {end['rss_bytes'] / MiB:.1f} MiB"
            f" (peak {gw['peak_rss_bytes'] / MiB:.1f}), open fds {start['open_fds']} ->"
            f" {end['open_fds']} (peak {gw['peak_open_fds']}); {len(gw['log_errors'])}"
            " error lines in its log"
        )
        for when in ("start", "end"):
            kinds = ", ".join(f"{k} {n}" for k, n in gw[f"{when}_fds"].items())
            lines.append(f"  fds at the {when}: {kinds}")
    drain_seen = report["drain"]
    lines.append(
        f"drain: {'done' if drain_seen['drained'] else 'NOT done'} in {drain_seen['seconds']} s"
    )
    lines.append(f"verdict: {'PASS' if report['passed'] else 'FAIL: ' + report['why']}")
    return "\n".join(lines)


def build_report(
    args: argparse.Namespace, stack: SoakStack, ran: dict[str, Any], started_at: str
) -> dict[str, Any]:
    outcomes: list[Outcome] = ran["outcomes"]
    told = {o.file_id: o.element_id for o in outcomes if o.result == "ok" and o.file_id}
    holdings = [read_se(se.name, stack.se_data(se)) for se in stack.ses]
    accounting: Accounting = account(told, holdings, read_registry(stack.admin))
    usage: list[Usage] = ran["usage"]
    kinds = per_kind(outcomes)
    failed = kinds["total"]["failed"]
    acc = accounting.as_json()
    defects = {
        "failed uploads": failed,
        "orphans": acc["orphans"],
        "unregistered": acc["unregistered"],
        "missing": acc["missing"],
        "unclaimed": acc["unclaimed"],
        "dangling": acc["dangling"],
        "misplaced": acc["misplaced"],
        "duplicated": acc["duplicated"],
        "gateway down": 0 if ran["gateway_alive"] else 1,
        "not drained": 0 if ran["drain"]["drained"] else 1,
    }
    why = ", ".join(f"{name} {n}" for name, n in defects.items() if n)
    start, end = ran["start_usage"], ran["end_usage"]
    return {
        "started_at": started_at,
        "command": " ".join(["benchmarks/soak.py", *sys.argv[1:]]),
        "git": report_git(ROOT),
        "settings": {
            "duration_s": args.duration,
            "clients": args.clients,
            "storage_elements": args.storage_elements,
            "rate_bytes_per_s": args.rate_bytes,
            "max_size": args.max_size_bytes,
            "body_timeout_s": args.body_timeout,
            "warmup_s": args.warmup,
            "seed": args.seed,
            "kinds": KINDS,
            "gateway_env": args.env,
        },
        "traffic_seconds": ran["traffic_seconds"],
        "kinds": kinds,
        "refused_by_code": tally(outcomes, "refused"),
        "failed_by_reason": tally(outcomes, "failed"),
        "failures": [asdict(o) for o in outcomes if o.result == "failed"][:100],
        "disruptions": [asdict(d) for d in ran["plan"]],
        "drain": ran["drain"],
        "accounting": acc,
        "storage_elements": [
            {"element_id": h.element_id, "files": len(h.files), "partials": h.partials}
            for h in holdings
        ],
        "gateway": {
            "start": asdict(start),
            "start_fds": ran["start_fds"],
            "end_fds": ran["end_fds"],
            "end": None if end is None else asdict(end),
            "peak_rss_bytes": max((u.rss_bytes for u in usage), default=0),
            "peak_open_fds": max((u.open_fds for u in usage), default=0),
            "samples": [asdict(u) for u in usage],
            "log_errors": gateway_log_errors(stack.gateway)[:100],
        },
        "defects": defects,
        "passed": not why,
        "why": why,
    }


# -- entry -----------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    logdir = args.out / "logs" / f"soak-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    base = TMPFS if TMPFS.is_dir() else None
    need = args.rate_bytes * args.duration * 1.2 + 256 * MiB
    if base is not None and shutil.disk_usage(base).free < need:
        say(f"{TMPFS} has less than {need / 2**30:.1f} GiB free for what the SEs store")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="ingester-soak-", dir=base))
    stack: SoakStack | None = None
    try:
        stack = SoakStack(workdir, logdir, args.storage_elements, args.body_timeout, args.env)
        stack.start()
        say(
            f"soak seed {args.seed}: redis {stack.redis.url}, admin {stack.admin.url}, "
            + ", ".join(f"{se.name} {se.url}" for se in stack.ses)
            + f", gateway {stack.gateway.url}; SE data in {workdir}, logs in {logdir}"
        )
        ran = asyncio.run(soak(args, stack))
        report = build_report(args, stack, ran, started_at.isoformat(timespec="seconds"))
        for line in render(report).splitlines():
            say(line)
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / f"soak-{stamp}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {out}")
        return 0 if report["passed"] else 1
    except KeyboardInterrupt:
        say("\ninterrupted: stopping the servers")
        return 130
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        if stack is not None:
            stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
