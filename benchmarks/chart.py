"""`results/latest.png`: every charted figure as a horizontal bar against its target.

A "ratio" row draws gateway/reference; an "absolute" row (peak RSS, first-byte delay)
draws value/limit, so its target is 1. Each target (`targets.py`) is a black tick on
its row; the bar is green when its targets are met, red when not, grey when there is
none. "≥" rows
must reach past their tick, "≤" rows stay short of it. Log scale: the ratios span
0.01 (CPU per small upload) to ~1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.targets import SIGNS

if TYPE_CHECKING:
    from benchmarks.machine import Machine
    from benchmarks.targets import Row

GREEN, RED, GREY = "#2e9e44", "#d0383b", "#9a9a9a"


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    ticks: tuple[float, ...]  # the targets, on the bar's scale
    met: bool | None


def _bars(rows: list[Row]) -> list[Bar]:
    out = []
    for row in rows:
        r = row.reading
        value = r.value
        if r.chart is None or value is None or value <= 0:
            continue
        row_targets = [v.target for v in row.verdicts]
        label = r.chart
        scale = 1.0
        if r.kind == "absolute" and row_targets:
            scale = row_targets[0].limit or 1.0  # drawn as value / limit: the target is 1
            label += f" / {scale:g}"
        ticks = tuple(t.limit / scale for t in row_targets)
        if row_targets:
            limits = (f"{SIGNS[t.op]} {x:g}" for t, x in zip(row_targets, ticks, strict=True))
            label += f"  ({', '.join(limits)})"
        out.append(Bar(label, value / scale, ticks, row.met))
    return out


def write_chart(path: Path, rows: list[Row], machine: Machine, settings: dict[str, Any]) -> bool:
    bars = _bars(rows)
    if not bars:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 1.0 + 0.55 * len(bars)
    fig, ax = plt.subplots(figsize=(10, height), dpi=110)
    ys = list(range(len(bars)))[::-1]
    values = [b.value for b in bars]
    colors = [{True: GREEN, False: RED, None: GREY}[b.met] for b in bars]
    ax.barh(ys, values, color=colors, height=0.6, zorder=2)
    for y, bar in zip(ys, bars, strict=True):
        for tick in bar.ticks:
            if tick > 0:  # a "= 0" target has no place on a log scale
                ax.plot([tick, tick], [y - 0.42, y + 0.42], color="black", lw=2, zorder=3)
        ax.text(bar.value * 1.04, y, f"{bar.value:.3g}", va="center", fontsize=8, zorder=4)
    ax.set_yticks(ys)
    ax.set_yticklabels([b.label for b in bars], fontsize=8)
    ax.set_xscale("log")
    span = values + [t for b in bars for t in b.ticks if t > 0]
    lo, hi = min(span) / 1.6, max(span) * 2.0
    left = 10 ** (math.floor(math.log10(lo) * 4) / 4)  # a quarter-decade below the least
    ax.set_xlim(left, hi)
    ax.grid(axis="x", which="both", alpha=0.25, zorder=0)
    ax.set_xlabel(
        "gateway / reference (value / limit for absolute targets); black tick = target;"
        " green met, red not met, grey reported",
        fontsize=8,
    )
    ax.set_title(
        f"ingester-gateway, {settings.get('started_at', '')}, git {settings.get('git', '')}\n"
        f"{machine.cpu_model}, {machine.cores} cores, {machine.memory_gib} GiB;"
        f" median of {settings.get('repeat', '?')} (repeated) / 1 run",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
