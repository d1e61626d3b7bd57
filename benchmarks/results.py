"""The files of a run: `latest.md` (for people), `latest.json` (every number of every
run, every figure with its targets and verdicts) and `latest.png` (the chart)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.chart import write_chart
from benchmarks.machine import Machine
from benchmarks.render import render_markdown, targets_line
from benchmarks.summary import Summaries
from benchmarks.targets import Row, tally


def figure_json(row: Row) -> dict[str, Any]:
    """One figure. `target`, `met`, `bar`, `op` and `limit` keep the names of older results
    (`bar`, `op`, `limit`: the figure's first target); `targets` has all of them."""
    r = row.reading
    first = row.verdicts[0].target if row.verdicts else None
    return {
        "key": row.key,
        "figure": r.label,
        "gateway": r.gateway,
        "reference": r.reference,
        "unit": r.unit,
        "ratio": r.ratio,
        "target": row.target_text(),
        "met": row.met,
        "bar": first.issue if first else None,
        "note": r.note,
        "chart": r.chart,
        "kind": r.kind,
        "limit": first.limit if first else None,
        "op": first.op if first else "",
        "ref_unit": r.ref_unit,
        "targets": [asdict(v.target) | {"met": v.met} for v in row.verdicts],
    }


def write_results(
    out_dir: Path,
    summaries: Summaries,
    rows: list[Row],
    machine: Machine,
    settings: dict[str, Any],
    titles: Mapping[str, str],
) -> tuple[Path, Path, Path | None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "latest.md"
    js = out_dir / "latest.json"
    png = out_dir / "latest.png"
    md.write_text(render_markdown(summaries, rows, machine, settings, titles))
    payload = {
        "settings": settings,
        "machine": asdict(machine),
        "figures": [figure_json(row) for row in rows],
        # per issue: every target of it judged in this run met (None: none judged)
        "bars": {issue: t.passed for issue, t in tally(rows).items()},
        "targets": targets_line(rows),
        "scenarios": {k: s.as_json() for k, s in summaries.items()},
    }
    js.write_text(json.dumps(payload, indent=2) + "\n")
    made = write_chart(png, rows, machine, settings)
    return md, js, png if made else None
