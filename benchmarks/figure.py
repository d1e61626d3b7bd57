"""A figure: one row of the Figures table of latest.md, computed from the summaries of
the scenarios that ran.

Each concern module of `benchmarks/scenarios/` declares its figures as `Figure(key,
needs, compute)`. The key names the figure in the target table (`targets.py`) and in
latest.json; `needs` are the scenario keys it is computed from (a figure whose
scenarios did not run is left out, so `--only` keeps working); `compute` returns the
`Reading` (or None when a run lacked the value, e.g. no RSS sample). Whether a reading
meets a target is not the figure's business: `targets.judge` decides that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from benchmarks.summary import Summaries


@dataclass(frozen=True)
class Reading:
    """The numbers of one figure and how to show them."""

    label: str  # the row's text (latest.json: `figure`)
    gateway: float | None
    reference: float | None  # None for an absolute figure
    unit: str
    # "ratio": gateway/reference is what a target compares and the chart draws;
    # "absolute": the gateway's value itself, in `unit`
    kind: Literal["ratio", "absolute"] = "ratio"
    ref_unit: str | None = None  # when the reference's unit differs from the gateway's
    note: str = ""  # a line under the table
    chart: str | None = None  # the bar's label in latest.png; None: not charted

    @property
    def ratio(self) -> float | None:
        if self.kind != "ratio" or self.gateway is None or not self.reference:
            return None
        return self.gateway / self.reference

    @property
    def value(self) -> float | None:
        """What a target compares: the ratio, or for an absolute figure the value."""
        return self.ratio if self.kind == "ratio" else self.gateway


@dataclass(frozen=True)
class Figure:
    key: str  # stable: the target table and latest.json name the figure by it
    needs: tuple[str, ...]  # scenario keys; the figure is computed when all of them ran
    compute: Callable[[Summaries], Reading | None]


def compute_figures(figures: Iterable[Figure], summaries: Summaries) -> dict[str, Reading]:
    """Figure key -> reading, in declaration order, for the figures whose scenarios ran."""
    readings: dict[str, Reading] = {}
    for declared in figures:
        if all(key in summaries for key in declared.needs):
            reading = declared.compute(summaries)
            if reading is not None:
                readings[declared.key] = reading
    return readings
