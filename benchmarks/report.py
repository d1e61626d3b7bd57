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

from benchmarks.scenarios import Measurement

MiB = 2**20
GiB = 2**30
ROLES = ("curl", "nginx", "gateway", "se")


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
    bar: str | None = None  # the issue whose bar this row is part of, e.g. "issue 2"
    note: str = ""

    def cells(self) -> list[str]:
        def num(v: float | None) -> str:
            if v is None:
                return "—"
            return f"{v:.2f} {self.unit}".strip() if abs(v) < 100 else f"{v:.0f} {self.unit}"

        return [
            self.figure,
            num(self.gateway),
            num(self.reference),
            "—" if self.ratio is None else f"{self.ratio:.2f}",
            self.target,
            {None: "—", True: "met", False: "**not met**"}[self.met],
        ]


FigureBuilder = Callable[[dict[str, Summary]], list[Figure]]


def issue2_figures(s: dict[str, Summary]) -> list[Figure]:
    rows: list[Figure] = []
    size = human_size(next(iter(s.values())).payload_bytes) if s else ""
    a, b, c, d = (s.get(k) for k in "abcd")
    if c and b:
        ratio = c.mb_s / b.mb_s
        rows.append(
            Figure(
                f"pass-through {size}, wall MB/s: gateway (c) / nginx (b)",
                c.mb_s,
                b.mb_s,
                "MB/s",
                ratio,
                "≥ 0.40",
                ratio >= 0.4,
                "issue 2",
            )
        )
    if c and a:
        rows.append(
            Figure(
                f"pass-through {size}, wall MB/s: gateway (c) / direct (a)",
                c.mb_s,
                a.mb_s,
                "MB/s",
                c.mb_s / a.mb_s,
            )
        )
    for summary, label in ((c, "pass-through (c)"), (d, "zstd (d)")):
        if summary and summary.gateway_peak_rss is not None:
            peak = summary.gateway_peak_rss / MiB
            rows.append(
                Figure(
                    f"gateway peak RSS during a {size} upload, {label}",
                    peak,
                    None,
                    "MiB",
                    target="≤ 100 MiB",
                    met=peak <= 100,
                    bar="issue 2",
                )
            )
    if c and b:
        gw, ng = c.cpu_per_gib("gateway"), b.cpu_per_gib("nginx")
        rows.append(
            Figure(
                "pass-through CPU-s per GiB: gateway (c) / nginx (b)",
                gw,
                ng,
                "s",
                gw / ng if ng else None,
            )
        )
    if d:
        ratio = d.extra("compression_ratio")
        rows.append(
            Figure(
                f"zstd-3 on text {size}, wall MB/s (stored {ratio:.2f}x smaller)"
                if ratio
                else f"zstd-3 on text {size}, wall MB/s",
                d.mb_s,
                None,
                "MB/s",
                note="reference (python-zstandard alone) comes with issue 3",
            )
        )
        rows.append(Figure("zstd CPU-s per GiB: gateway (d)", d.cpu_per_gib("gateway"), None, "s"))
    return rows


# Issue 3 appends its builders here (codec speed, multipart, small files, memory, ...).
FIGURES: list[FigureBuilder] = [issue2_figures]


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
    packages: dict[str, str] = field(
        default_factory=lambda: {
            p: _package(p) for p in ("uvicorn", "uvloop", "httptools", "aiohttp", "zstandard")
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
            f"- Python {self.python}; {pk}; {self.curl}; {self.nginx}",
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


def scenarios_table(summaries: dict[str, Summary]) -> str:
    rows = []
    for s in summaries.values():
        lo, hi = s.mb_s_range
        spread = f" ({lo:.0f}-{hi:.0f})" if len(s.runs) > 1 else ""
        rss = s.gateway_peak_rss
        hwm = s.gateway_hwm
        rows.append(
            [
                f"{s.key}: {s.title}",
                f"{s.mb_s:.0f}{spread}",
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
            "all",
            "gateway peak RSS / VmHWM MiB",
        ],
        rows,
    )


def bar_verdict(figures: list[Figure], bar: str) -> bool | None:
    checked = [f.met for f in figures if f.bar == bar]
    if not checked:
        return None
    return all(bool(m) for m in checked)


def render_markdown(
    summaries: dict[str, Summary],
    figures: list[Figure],
    machine: Machine,
    settings: dict[str, Any],
) -> str:
    verdict = bar_verdict(figures, "issue 2")
    verdict_text = {None: "not measured", True: "**met**", False: "**not met**"}[verdict]
    size = human_size(settings["size"])
    notes = [f"- {f.figure}: {f.note}" for f in figures if f.note]
    parts = [
        "# ingester-gateway benchmark",
        "",
        f"`{settings['command']}` — {settings['started_at']}, git {settings['git']}; "
        f"{size} per upload, median of {settings['repeat']} run(s) per scenario "
        "(peak RSS: the largest of the runs).",
        "",
        "## Machine",
        "",
        *machine.lines(),
        f"- bare `hashlib.sha256`: {settings['sha256_cpu_s_per_gib']:.2f} CPU-s per GiB",
        "",
        "## Figures",
        "",
        figures_table(figures),
        "",
        f"Bar of issue 2 (c/b ≥ 0.4, gateway peak RSS ≤ 100 MiB): {verdict_text}."
        + ("" if settings["size"] == GiB else " (The bar is defined for 1 GiB uploads.)"),
        *(["", *notes] if notes else []),
        "",
        "## Scenarios",
        "",
        scenarios_table(summaries),
        "",
        "MB/s = 10^6 bytes of payload per second of curl's wall time. CPU-s/GiB = user+sys"
        " of each process tree during the upload, per GiB of payload; servers not on a"
        " scenario's path show their idle cost. Peak RSS = largest sum of VmRSS over the"
        " gateway's process tree, sampled every 50 ms; VmHWM = its kernel-kept peak since a"
        " reset at the start of the upload.",
        "",
    ]
    return "\n".join(parts)


def write_results(
    out_dir: Path,
    summaries: dict[str, Summary],
    figures: list[Figure],
    machine: Machine,
    settings: dict[str, Any],
) -> tuple[Path, Path]:
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "latest.md"
    js = out_dir / "latest.json"
    md.write_text(render_markdown(summaries, figures, machine, settings))
    payload = {
        "settings": settings,
        "machine": asdict(machine),
        "figures": [asdict(f) for f in figures],
        "bars": {"issue 2": bar_verdict(figures, "issue 2")},
        "scenarios": {k: s.as_json() for k, s in summaries.items()},
    }
    js.write_text(json.dumps(payload, indent=2) + "\n")
    return md, js


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
