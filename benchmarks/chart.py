"""`results/latest.png`: every charted figure as a horizontal bar against its target.

A "ratio" row draws gateway/reference; an "absolute" row (peak RSS, first-byte delay)
draws value/limit, so its target is 1. The target is the black tick on each row; the
bar is green when the target is met, red when not, grey when there is none. "≥" rows
must reach past their tick, "≤" rows stay short of it. Log scale: the ratios span
0.01 (CPU per small upload) to ~1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.report import Figure, Machine

GREEN, RED, GREY = "#2e9e44", "#d0383b", "#9a9a9a"


def _points(figures: list[Figure]) -> list[tuple[str, float, float | None, str, bool | None]]:
    out = []
    for f in figures:
        value = f.chart_value
        if f.chart is None or value is None or value <= 0:
            continue
        limit = f.limit
        if f.kind == "absolute" and limit:
            value, limit = value / limit, 1.0
        sign = {">=": "≥", "<=": "≤"}.get(f.op, "")
        label = f.chart.replace("\\n", "\n") + (f"  ({sign} {limit:g})" if limit else "")
        out.append((label, value, limit, f.op, f.met))
    return out


def write_chart(
    path: Path, figures: list[Figure], machine: Machine, settings: dict[str, Any]
) -> bool:
    points = _points(figures)
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 1.0 + 0.55 * len(points)
    fig, ax = plt.subplots(figsize=(10, height), dpi=110)
    ys = list(range(len(points)))[::-1]
    values = [p[1] for p in points]
    colors = [{True: GREEN, False: RED, None: GREY}[p[4]] for p in points]
    ax.barh(ys, values, color=colors, height=0.6, zorder=2)
    for y, (_, value, limit, _, _) in zip(ys, points, strict=True):
        if limit:
            ax.plot([limit, limit], [y - 0.42, y + 0.42], color="black", lw=2, zorder=3)
        ax.text(value * 1.04, y, f"{value:.3g}", va="center", fontsize=8, zorder=4)
    ax.set_yticks(ys)
    ax.set_yticklabels([p[0] for p in points], fontsize=8)
    ax.set_xscale("log")
    span = values + [p[2] for p in points if p[2]]
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
