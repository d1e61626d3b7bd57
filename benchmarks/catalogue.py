"""Every scenario and every figure, collected from the concern modules in report order,
and checked against the target table when imported: scenario and figure keys are
unique, and every target names a declared figure."""

from __future__ import annotations

from benchmarks.figure import Figure
from benchmarks.scenario import Scenario
from benchmarks.scenarios import (
    auth,
    codecs,
    drain,
    edge,
    finalize,
    first_byte,
    memory,
    multipart,
    passthrough,
    registry,
    resumable,
    small_files,
    tracing,
)
from benchmarks.targets import unknown_figures

CONCERNS = (
    passthrough,
    codecs,
    multipart,
    registry,
    small_files,
    memory,
    first_byte,
    auth,
    finalize,
    resumable,
    drain,
    tracing,
    edge,
)

SCENARIOS: dict[str, Scenario] = {s.key: s for c in CONCERNS for s in c.SCENARIOS}
FIGURES: tuple[Figure, ...] = tuple(f for c in CONCERNS for f in c.FIGURES)


def _check() -> None:
    scenario_count = sum(len(c.SCENARIOS) for c in CONCERNS)
    if len(SCENARIOS) != scenario_count:
        raise RuntimeError("two scenarios share a key")
    keys = [f.key for f in FIGURES]
    if len(set(keys)) != len(keys):
        raise RuntimeError(
            f"two figures share a key: {sorted(k for k in keys if keys.count(k) > 1)}"
        )
    if unknown := unknown_figures(keys):
        raise RuntimeError(f"targets.py names figures nobody declares: {unknown}")
    if undeclared := [k for f in FIGURES for k in f.needs if k not in SCENARIOS]:
        raise RuntimeError(f"figures need scenarios nobody declares: {undeclared}")


_check()
