"""From measurements to figures: per-scenario summaries, the table of figures with
their targets, the machine, and the files `results/latest.md` / `latest.json`.

The table has one row per figure: figure, gateway, reference, ratio, target, met?.
Rows come from the builders in `FIGURES`; a builder gets the summaries of the
scenarios that ran and returns its rows (none when its scenarios did not run).
Issue 3's figures are added as further builders.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.scenario import Measurement

MiB = 2**20
GiB = 2**30
ROLES = ("curl", "nginx", "gateway", "se", "other")


def human_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


@dataclass
class Summary:
    """One scenario over its repetitions: medians of rates and costs, max of memory."""

    key: str
    title: str
    runs: list[Measurement]
    table: str = "upload"  # which table lists it (Scenario.table)

    @property
    def payload_bytes(self) -> int:
        return self.runs[0].payload_bytes

    @property
    def mb_s(self) -> float:
        return statistics.median(m.mb_s for m in self.runs)

    @property
    def mb_s_range(self) -> tuple[float, float]:
        rates = [m.mb_s for m in self.runs]
        return min(rates), max(rates)

    @property
    def wall_s(self) -> float:
        return statistics.median(m.wall_s for m in self.runs)

    def cpu_per_gib(self, role: str) -> float:
        return statistics.median(m.cpu_per_gib(role) for m in self.runs)

    @property
    def gateway_peak_rss(self) -> int | None:
        peaks = [m.gateway_peak_rss for m in self.runs if m.gateway_peak_rss is not None]
        return max(peaks) if peaks else None

    @property
    def gateway_hwm(self) -> int | None:
        peaks = [m.gateway_hwm for m in self.runs if m.gateway_hwm is not None]
        return max(peaks) if peaks else None

    def loop_cpu_per_gib(self) -> float | None:
        """CPU-s per GiB of the gateway's event-loop thread (the rest: its worker threads)."""
        values = [
            m.extra["gateway_loop_cpu_s"] * GiB / m.payload_bytes
            for m in self.runs
            if "gateway_loop_cpu_s" in m.extra
        ]
        return statistics.median(values) if values else None

    def cpu_cell(self, role: str) -> str:
        text = f"{self.cpu_per_gib(role):.2f}"
        loop = self.loop_cpu_per_gib()
        if role == "gateway" and loop is not None and self.cpu_per_gib(role) >= 0.1:
            text += f" (loop {loop:.2f})"
        return text

    def extra(self, name: str) -> Any:
        values = [m.extra[name] for m in self.runs if m.extra.get(name) is not None]
        return statistics.median(values) if values else None

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "table": self.table,
            "payload_bytes": self.payload_bytes,
            "median_mb_s": round(self.mb_s, 2),
            "median_wall_s": round(self.wall_s, 3),
            "median_cpu_s_per_gib": {r: round(self.cpu_per_gib(r), 3) for r in ROLES},
            "median_gateway_loop_thread_cpu_s_per_gib": self.loop_cpu_per_gib(),
            "gateway_peak_rss_bytes": self.gateway_peak_rss,
            "gateway_vmhwm_bytes": self.gateway_hwm,
            "runs": [asdict(m) | {"mb_s": round(m.mb_s, 2)} for m in self.runs],
        }


@dataclass
class Figure:
    figure: str
    gateway: float | None
    reference: float | None
    unit: str
    ratio: float | None = None
    target: str = "reported"
    met: bool | None = None  # None: no target
    bar: str | None = None  # the issue whose bar this row is part of, e.g. "issue 3"
    note: str = ""
    # for the chart: the value compared with the target and the target itself
    # ("ratio" rows compare `ratio`, "absolute" rows compare `gateway`), and whether
    # the target is a floor (">=") or a ceiling ("<=")
    chart: str | None = None  # short label; None: not charted
    kind: str = "ratio"
    limit: float | None = None
    op: str = ""
    ref_unit: str | None = None  # when the reference's unit differs from the gateway's

    def cells(self) -> list[str]:
        def num(v: float | None, unit: str) -> str:
            if v is None:
                return "—"
            if abs(v) >= 100:
                return f"{v:.0f} {unit}".strip()
            if abs(v) >= 1 or v == 0:
                return f"{v:.2f} {unit}".strip()
            return f"{v:.3f} {unit}".strip()

        return [
            self.figure,
            num(self.gateway, self.unit),
            num(self.reference, self.ref_unit or self.unit),
            "—"
            if self.ratio is None
            else f"{self.ratio:.3f}"
            if self.ratio < 0.1
            else f"{self.ratio:.2f}",
            self.target,
            {None: "—", True: "met", False: "**not met**"}[self.met],
        ]

    @property
    def chart_value(self) -> float | None:
        return self.ratio if self.kind == "ratio" else self.gateway


def _judge(value: float | None, op: str, limit: float) -> bool | None:
    if value is None:
        return None
    return value >= limit if op == ">=" else value <= limit


def target(
    figure: str,
    gateway: float | None,
    reference: float | None,
    unit: str,
    *,
    op: str,
    limit: float,
    chart: str | None = None,
    kind: str = "ratio",
    bar: str | None = "issue 3",
    note: str = "",
    ref_unit: str | None = None,
    target_text: str | None = None,
) -> Figure:
    """A row with a target: `ratio` (gateway/reference) or, for kind "absolute", the
    gateway's value itself is compared with `limit`."""
    ratio = gateway / reference if gateway is not None and reference else None
    value = ratio if kind == "ratio" else gateway
    sign = "≥" if op == ">=" else "≤"
    shown = f"{limit:g} {unit}" if kind == "absolute" else f"{limit:.2f}"
    return Figure(
        figure,
        gateway,
        reference,
        unit,
        ratio if kind == "ratio" else None,
        target_text or f"{sign} {shown}",
        _judge(value, op, limit),
        bar,
        note,
        chart,
        kind,
        limit,
        op,
        ref_unit,
    )


FigureBuilder = Callable[[dict[str, Summary]], list[Figure]]


def issue2_passed(s: dict[str, Summary]) -> bool | None:
    """Issue 2's bar: c/b ≥ 0.40 and the gateway's peak RSS ≤ 100 MiB in c and d."""
    b, c, d = s.get("b"), s.get("c"), s.get("d")
    if not (b and c):
        return None
    peaks = [x.gateway_peak_rss for x in (c, d) if x and x.gateway_peak_rss is not None]
    return c.mb_s / b.mb_s >= 0.4 and all(p <= 100 * MiB for p in peaks)


def passthrough_figures(s: dict[str, Summary]) -> list[Figure]:
    rows: list[Figure] = []
    a, b, c, d, sha = (s.get(k) for k in ("a", "b", "c", "d", "sha"))
    size = human_size(c.payload_bytes if c else b.payload_bytes if b else 0) if (b or c) else ""
    if c and b:
        rows.append(
            target(
                f"1. pass-through {size}, wall MB/s: gateway (c) / nginx (b)",
                c.mb_s,
                b.mb_s,
                "MB/s",
                op=">=",
                limit=0.6,
                chart="pass-through MB/s\ngateway / nginx",
            )
        )
    if c and a:
        rows.append(
            Figure(
                f"1. pass-through {size}, wall MB/s: gateway (c) / direct to the SE (a)",
                c.mb_s,
                a.mb_s,
                "MB/s",
                c.mb_s / a.mb_s,
            )
        )
    if c and b and sha:
        gw, ng, h = c.cpu_per_gib("gateway"), b.cpu_per_gib("nginx"), sha.cpu_per_gib("ref")
        rows.append(
            target(
                f"1. pass-through CPU-s per GiB: (gateway (c) - bare sha256 {h:.2f}) / nginx (b)",
                gw - h,
                ng,
                "s",
                op="<=",
                limit=1.5,
                chart="pass-through CPU/GiB\n(gateway - sha256) / nginx",
            )
        )
    if c and b:
        gw, ng = c.cpu_per_gib("gateway"), b.cpu_per_gib("nginx")
        rows.append(
            Figure(
                "1. pass-through CPU-s per GiB, sha256 included: gateway (c) / nginx (b)",
                gw,
                ng,
                "s",
                gw / ng if ng else None,
            )
        )
    for summary, label in ((c, "pass-through (c)"), (d, "zstd (d)")):
        if summary and summary.gateway_peak_rss is not None:
            rows.append(
                target(
                    f"gateway peak RSS during a {human_size(summary.payload_bytes)} upload,"
                    f" {label}",
                    summary.gateway_peak_rss / MiB,
                    None,
                    "MiB",
                    op="<=",
                    limit=100,
                    kind="absolute",
                    bar="issue 2",
                    chart=f"peak RSS MiB, 1 upload\n{label} / 100",
                )
            )
    return rows


def codec_figures(s: dict[str, Summary]) -> list[Figure]:
    rows: list[Figure] = []
    d, d2, zref, zref2 = (s.get(k) for k in ("d", "d2", "zref", "zref2"))
    if d and zref:
        ratio = zref.extra("compression_ratio")
        rows.append(
            target(
                f"2. zstd-3 on text {human_size(d.payload_bytes)}, MB/s: gateway (d, stores"
                f" {d.extra('compression_ratio') or 0:.2f}x) / python-zstandard alone,"
                f" 1 thread (zref, {ratio or 0:.2f}x)",
                d.mb_s,
                zref.mb_s,
                "MB/s",
                op=">=",
                limit=0.8,
                chart="zstd MB/s\ngateway / zstd alone",
            )
        )
    if d2 and zref:
        honoured = all(m.extra.get("zstd_threads_supported") for m in d2.runs)
        rows.append(
            target(
                "2. zstd-3 MB/s: gateway with INGESTER_ZSTD_THREADS=2 (d2) / zstd alone, 1 thread"
                + ("" if honoured else " — setting not in this tree, ran single-threaded"),
                d2.mb_s,
                zref.mb_s,
                "MB/s",
                op=">=",
                limit=0.8,
                chart="zstd MB/s, threads=2\ngateway / zstd alone",
                target_text="≥ 0.80 (option)",
            )
        )
    if d2 and zref2:
        rows.append(
            Figure(
                "2. zstd-3 threads=2 MB/s: gateway (d2)"
                " / python-zstandard alone, threads=2 (zref2)",
                d2.mb_s,
                zref2.mb_s,
                "MB/s",
                d2.mb_s / zref2.mb_s,
            )
        )
    if d and zref:
        gw, ref = d.cpu_per_gib("gateway"), zref.cpu_per_gib("ref")
        rows.append(
            Figure("2. zstd CPU-s per GiB: gateway (d) / zstd alone (zref)", gw, ref, "s", gw / ref)
        )
    for gw_key, ref_key, name in (("br", "bref", "brotli"), ("gz", "gref", "gzip")):
        g, r = s.get(gw_key), s.get(ref_key)
        if g and r:
            level = r.runs[0].extra.get("level")
            g_ratio, r_ratio = g.extra("compression_ratio"), r.extra("compression_ratio")
            rows.append(
                Figure(
                    f"2. {name}-{level} on text, MB/s: gateway ({gw_key}, stores"
                    f" {g_ratio or 0:.2f}x) / {name} alone ({ref_key}, {r_ratio or 0:.2f}x)",
                    g.mb_s,
                    r.mb_s,
                    "MB/s",
                    g.mb_s / r.mb_s,
                    chart=f"{name} MB/s\ngateway / {name} alone",
                )
            )
    return rows


def multipart_figures(s: dict[str, Summary]) -> list[Figure]:
    m, c = s.get("m"), s.get("c")
    if not (m and c):
        return []
    return [
        target(
            f"3. multipart {human_size(m.payload_bytes)}, MB/s:"
            " gateway multipart (m) / raw PUT (c)",
            m.mb_s,
            c.mb_s,
            "MB/s",
            op=">=",
            limit=0.9,
            chart="multipart / raw PUT\nMB/s",
        )
    ]


def registry_figures(s: dict[str, Summary]) -> list[Figure]:
    cr, c = s.get("cr"), s.get("c")
    if not (cr and c):
        return []
    return [
        target(
            f"issue 4. pass-through {human_size(cr.payload_bytes)}, MB/s: nodes from Redis,"
            " breakers on (cr) / static registry (c)",
            cr.mb_s,
            c.mb_s,
            "MB/s",
            op=">=",
            limit=0.95,
            chart="Redis registry /\nstatic, MB/s",
        )
    ]


def small_figures(s: dict[str, Summary]) -> list[Figure]:
    rows: list[Figure] = []
    base, nginx = s.get("sb"), s.get("sn")
    gateways = [
        (k, s[k], label) for k, label in (("s1", "1 worker"), ("s2", "2 workers")) if k in s
    ]

    def per_1000(x: Summary) -> float:
        return float(x.extra("server_cpu_per_1000_s"))

    for key, gw, label in gateways:
        if base:
            rows.append(
                target(
                    f"4. 4 KiB uploads, CPU-s per 1000: gateway {label} ({key}) / baseline (sb)",
                    per_1000(gw),
                    per_1000(base),
                    "s",
                    op="<=",
                    limit=0.1,
                    chart=f"4 KiB CPU per 1000\ngateway {label} / baseline",
                )
            )
            rows.append(
                target(
                    f"4. 4 KiB uploads, p99 latency: gateway {label} ({key}) / baseline (sb)",
                    gw.extra("p99_ms"),
                    base.extra("p99_ms"),
                    "ms",
                    op="<=",
                    limit=0.2,
                    chart=f"4 KiB p99\ngateway {label} / baseline",
                )
            )
            rows.append(
                Figure(
                    f"4. 4 KiB uploads, p50 latency: gateway {label} ({key}) / baseline (sb)",
                    gw.extra("p50_ms"),
                    base.extra("p50_ms"),
                    "ms",
                    gw.extra("p50_ms") / base.extra("p50_ms"),
                )
            )
            rows.append(
                Figure(
                    f"4. 4 KiB uploads, requests/s: gateway {label} ({key}) / baseline (sb)",
                    gw.extra("requests_per_s"),
                    base.extra("requests_per_s"),
                    "req/s",
                    gw.extra("requests_per_s") / base.extra("requests_per_s"),
                )
            )
        if nginx:
            rows.append(
                Figure(
                    f"4. 4 KiB uploads, requests/s: gateway {label} ({key}) / nginx -> SE (sn)",
                    gw.extra("requests_per_s"),
                    nginx.extra("requests_per_s"),
                    "req/s",
                    gw.extra("requests_per_s") / nginx.extra("requests_per_s"),
                )
            )
    small = [x for x in (s.get(k) for k in ("s1", "s2", "sb", "sn")) if x]
    if small:
        bad = sum(m.extra["non_201"] for x in small for m in x.runs)
        errors = sum(sum(m.extra["socket_errors"].values()) for x in small for m in x.runs)
        keys = ",".join(x.key for x in small)
        rows.append(
            target(
                f"4. non-201 responses (and socket errors: {errors}), all 4 KiB runs ({keys})",
                float(bad),
                None,
                "",
                op="<=",
                limit=0,
                kind="absolute",
                target_text="= 0",
            )
        )
    return rows


def memory_figures(s: dict[str, Summary]) -> list[Figure]:
    rows: list[Figure] = []
    big, conc, fb = s.get("big"), s.get("conc"), s.get("fb")
    if big and big.gateway_peak_rss is not None:
        rows.append(
            target(
                f"5. gateway peak RSS, one {human_size(big.payload_bytes)} upload made on the fly",
                big.gateway_peak_rss / MiB,
                None,
                "MiB",
                op="<=",
                limit=100,
                kind="absolute",
                chart=f"peak RSS MiB, {human_size(big.payload_bytes)}\n/ 100",
            )
        )
    if conc and conc.gateway_peak_rss is not None:
        run = conc.runs[0].extra
        rows.append(
            target(
                f"5. gateway peak RSS, {run['concurrency']} concurrent"
                f" {human_size(run['size_each'])} uploads",
                conc.gateway_peak_rss / MiB,
                None,
                "MiB",
                op="<=",
                limit=300,
                kind="absolute",
                chart=f"peak RSS MiB, {run['concurrency']} concurrent\n/ 300",
            )
        )
    if fb and fb.extra("first_byte_delay_ms") is not None:
        rate = fb.extra("client_rate_mb_s")
        rows.append(
            target(
                f"6. first body byte at the SE after the client's, client at {rate:.1f} MB/s",
                fb.extra("first_byte_delay_ms"),
                None,
                "ms",
                op="<=",
                limit=200,
                kind="absolute",
                chart="first byte delay ms\n/ 200",
            )
        )
    return rows


def jwt_figures(s: dict[str, Summary]) -> list[Figure]:
    j = s.get("jwt")
    if not j:
        return []
    extra = j.runs[0].extra
    cached, uncached = extra["cached"]["us_per_request"], extra["uncached"]["us_per_request"]
    return [
        Figure(
            f"7. auth cost per request (same token, {extra['count']}x):"
            " with the token cache / without (cache_size=0)",
            cached,
            uncached,
            "µs",
            cached / uncached,
            note=f"the cache makes a repeat token {uncached / cached:.0f}x cheaper",
            chart="auth µs per request\ncached / uncached",
        )
    ]


FIGURES: list[FigureBuilder] = [
    passthrough_figures,
    codec_figures,
    multipart_figures,
    registry_figures,
    small_figures,
    memory_figures,
    jwt_figures,
]


def build_figures(summaries: dict[str, Summary]) -> list[Figure]:
    return [row for builder in FIGURES for row in builder(summaries)]


# -- machine --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def report_git(root: Path) -> str:
    head = _version(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(root), "status", "--porcelain", "--", "src"])
    return head + (" (src modified)" if dirty not in ("", "unknown") else "")


@dataclass
class Machine:
    cpu_model: str = field(default_factory=_cpu_model)
    cores: int = field(default_factory=lambda: os.cpu_count() or 0)
    usable_cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    memory_gib: float = field(
        default_factory=lambda: round(
            os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GiB, 1
        )
    )
    kernel: str = field(default_factory=platform.release)
    python: str = field(default_factory=lambda: sys.version.split()[0])
    curl: str = field(default_factory=lambda: _version(["curl", "--version"]).split(" (")[0])
    nginx: str = field(
        default_factory=lambda: _version(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-v"]
        ).removeprefix("nginx version: ")
    )
    wrk: str = field(
        default_factory=lambda: (
            _version([shutil.which("wrk") or "wrk", "--version"]).split(" [")[0]
            if shutil.which("wrk")
            else "absent"
        )
    )
    packages: dict[str, str] = field(
        default_factory=lambda: {
            p: _package(p)
            for p in (
                *("uvicorn", "uvloop", "httptools", "aiohttp", "zstandard", "brotli"),
                *("python-jose", "fastapi", "httpx"),
            )
        }
    )
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)
    load_after: tuple[float, float, float] | None = None

    def lines(self) -> list[str]:
        pk = ", ".join(f"{k} {v}" for k, v in self.packages.items())
        load_after = "" if self.load_after is None else f", after {self.load_after[0]:.2f}"
        return [
            f"- CPU: {self.cpu_model}, {self.cores} cores ({self.usable_cores} usable),"
            f" {self.memory_gib} GiB RAM, Linux {self.kernel}",
            f"- Python {self.python}; {pk}; {self.curl}; {self.nginx}; {self.wrk}",
            f"- 1-min load average before the run {self.load_before[0]:.2f}{load_after}",
        ]


# -- output ---------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def figures_table(figures: list[Figure]) -> str:
    return markdown_table(
        ["figure", "gateway", "reference", "ratio", "target", "met?"], [f.cells() for f in figures]
    )


def _spread(s: Summary) -> str:
    lo, hi = s.mb_s_range
    return f" ({lo:.0f}-{hi:.0f})" if len(s.runs) > 1 else ""


def scenarios_table(summaries: dict[str, Summary]) -> str:
    rows = []
    for s in summaries.values():
        if s.table != "upload" or s.key in ONTHEFLY:
            continue
        rss = s.gateway_peak_rss
        hwm = s.gateway_hwm
        rows.append(
            [
                f"{s.key}: {s.title}",
                f"{s.mb_s:.0f}{_spread(s)}",
                f"{s.wall_s:.2f}",
                *(s.cpu_cell(r) for r in ROLES),
                f"{sum(s.cpu_per_gib(r) for r in ROLES):.2f}",
                "—" if rss is None else f"{rss / MiB:.0f} / {(hwm or 0) / MiB:.0f}",
            ]
        )
    return markdown_table(
        [
            "scenario",
            "MB/s median (min-max)",
            "wall s",
            "CPU-s/GiB curl",
            "nginx",
            "gateway",
            "SE",
            "other",
            "all",
            "gateway peak RSS / VmHWM MiB",
        ],
        rows,
    )


def references_table(summaries: dict[str, Summary]) -> str:
    rows = []
    for s in summaries.values():
        if s.table != "ref":
            continue
        ratio = s.extra("compression_ratio")
        rows.append(
            [
                f"{s.key}: {s.title}",
                f"{s.mb_s:.0f}{_spread(s)}",
                f"{s.cpu_per_gib('ref'):.2f}",
                "—" if ratio is None else f"{ratio:.2f}x",
            ]
        )
    if not rows:
        return ""
    return markdown_table(
        ["reference (subprocess)", "MB/s median (min-max)", "CPU-s/GiB", "compression"], rows
    )


SMALL_ROLES = ("gateway-w1", "gateway-w2", "baseline", "nginx", "se", "client")


def small_table(summaries: dict[str, Summary]) -> str:
    rows = []
    for s in summaries.values():
        if s.table != "small":
            continue
        m = s.runs[0]  # one run each
        x = m.extra
        per = x["cpu_per_1000_s"]
        on_path = {x["server"], "se", "client"}
        rows.append(
            [
                f"{s.key}: {s.title}",
                f"{x['stored']}",
                f"{x['requests_per_s']:.0f}",
                f"{x['p50_ms']:.1f}",
                f"{x['p99_ms']:.1f}",
                f"{x['max_ms']:.0f}",
                f"{x['non_201']}",
                *(
                    f"{per.get(r, 0.0):.2f}" if r in on_path else f"({per.get(r, 0.0):.2f})"
                    for r in SMALL_ROLES
                ),
                f"{sum(per.values()):.2f}",
            ]
        )
    if not rows:
        return ""
    return markdown_table(
        [
            "scenario",
            "uploads stored",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "non-201",
            "CPU-s per 1000: gateway (1 worker)",
            "gateway (2 workers)",
            "baseline",
            "nginx",
            "SE",
            "wrk",
            "all",
        ],
        rows,
    )


ONTHEFLY = ("fb", "big", "conc")


def onthefly_table(summaries: dict[str, Summary]) -> str:
    rows = []
    for key in ONTHEFLY:
        s = summaries.get(key)
        if s is None:
            continue
        x = s.runs[0].extra
        rss, hwm = s.gateway_peak_rss, s.gateway_hwm
        delay = x.get("first_byte_delay_ms")
        rows.append(
            [
                f"{s.key}: {s.title}",
                f"{x['ok']} x {human_size(x['size_each'])}",
                f"{s.mb_s:.0f}",
                f"{s.wall_s:.1f}",
                f"{s.cpu_per_gib('client'):.2f}",
                f"{s.cpu_per_gib('gateway'):.2f}",
                f"{s.cpu_per_gib('se'):.2f}",
                "—" if rss is None else f"{rss / MiB:.0f} / {(hwm or 0) / MiB:.0f}",
                f"{x.get('gateway_rss_before_bytes', 0) / MiB:.0f}",
                "—" if delay is None else f"{delay:.1f}",
            ]
        )
    if not rows:
        return ""
    return markdown_table(
        [
            "scenario",
            "uploads (all 201, sizes checked)",
            "MB/s",
            "wall s",
            "CPU-s/GiB client",
            "gateway",
            "SE",
            "gateway peak RSS / VmHWM MiB",
            "gateway RSS before MiB",
            "first-byte delay ms",
        ],
        rows,
    )


def bar_verdict(figures: list[Figure], bar: str) -> bool | None:
    checked = [f.met for f in figures if f.bar == bar and f.met is not None]
    if not checked:
        return None
    return all(checked)


def targets_line(figures: list[Figure]) -> str:
    judged = [f for f in figures if f.met is not None]
    missed = [f for f in judged if not f.met]
    text = f"{len(judged) - len(missed)} of {len(judged)} targets met"
    if missed:
        text += "; not met: " + "; ".join(f.figure for f in missed)
    return text


SKIP_TITLES = {"big": "the big upload's peak RSS", "conc": "the concurrent uploads' peak RSS"}


def render_markdown(
    summaries: dict[str, Summary],
    figures: list[Figure],
    machine: Machine,
    settings: dict[str, Any],
) -> str:
    issue2 = issue2_passed(summaries)
    issue2_text = {None: "not measured", True: "**met**", False: "**not met**"}[issue2]
    size = human_size(settings["size"])
    notes = [f"- {f.figure}: {f.note}" for f in figures if f.note]
    opts = settings.get("options", {})
    sections = [
        ("Uploads through each path", scenarios_table(summaries)),
        ("References: the libraries alone, same payloads", references_table(summaries)),
        (
            f"Small files: {opts.get('small_count', '?')} x {opts.get('small_size', '?')} B"
            f" multipart uploads, {opts.get('small_connections', '?')} connections,"
            " one JWT each (rotated), wrk",
            small_table(summaries),
        ),
        ("Uploads made on the fly (memory, first byte)", onthefly_table(summaries)),
    ]
    parts = [
        "# ingester-gateway benchmark",
        "",
        f"`{settings['command']}` — {settings['started_at']}, git {settings['git']};"
        f" {size} per upload, median of {settings['repeat']} run(s) for the repeated"
        " scenarios, one run for the others (peak RSS: the largest of the runs);"
        f" the whole run took {settings.get('run_minutes', 0):.1f} min.",
        "",
        "## Machine",
        "",
        *machine.lines(),
        f"- bare `hashlib.sha256` while the payloads were written:"
        f" {settings['sha256_cpu_s_per_gib']:.2f} CPU-s per GiB",
        "",
        "## Figures",
        "",
        figures_table(figures),
        "",
        f"Issue 3: {targets_line(figures)}.",
        *(
            f"\n**Skipped {key}** ({SKIP_TITLES.get(key, key)}): {reason}."
            for key, reason in settings.get("skipped", {}).items()
        ),
        "",
        f"Issue 2's bar (c/b ≥ 0.40, gateway peak RSS ≤ 100 MiB): {issue2_text}."
        + ("" if settings["size"] == GiB else " (The bars are defined for 1 GiB uploads.)"),
        *(["", *notes] if notes else []),
        "",
        "![ratios against their targets](latest.png)",
    ]
    for title, table in sections:
        if table:
            parts += ["", f"## {title}", "", table]
    parts += [
        "",
        "MB/s = 10^6 bytes of payload per second of the client's wall time. CPU-s/GiB ="
        " user+sys of each process tree during the upload, per GiB of payload; servers not"
        " on a scenario's path show their idle cost (`other`: the gateway instances and the"
        " baseline not on the path). Small files: CPU-s per 1000 uploads stored, values in"
        " parentheses are servers not on that path (idle). Peak RSS = largest sum of VmRSS"
        " over the gateway's process tree, sampled every 50 ms; VmHWM = its kernel-kept"
        " peak since a reset at the start of the upload. See benchmarks/README.md.",
        "",
    ]
    return "\n".join(parts)


def write_results(
    out_dir: Path,
    summaries: dict[str, Summary],
    figures: list[Figure],
    machine: Machine,
    settings: dict[str, Any],
) -> tuple[Path, Path, Path | None]:
    import json

    from benchmarks.chart import write_chart

    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "latest.md"
    js = out_dir / "latest.json"
    png = out_dir / "latest.png"
    md.write_text(render_markdown(summaries, figures, machine, settings))
    payload = {
        "settings": settings,
        "machine": asdict(machine),
        "figures": [asdict(f) for f in figures],
        "bars": {
            "issue 2": issue2_passed(summaries),
            "issue 3": bar_verdict(figures, "issue 3"),
        },
        "targets": targets_line(figures),
        "scenarios": {k: s.as_json() for k, s in summaries.items()},
    }
    js.write_text(json.dumps(payload, indent=2) + "\n")
    made = write_chart(png, figures, machine, settings)
    return md, js, png if made else None


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
