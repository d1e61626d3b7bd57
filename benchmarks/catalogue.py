"""Every scenario, collected from the concern modules in report order; scenario keys are
checked unique when imported."""

from __future__ import annotations

from benchmarks.scenario import Scenario
from benchmarks.scenarios import (
    auth,
    codecs,
    first_byte,
    memory,
    multipart,
    passthrough,
    registry,
    small_files,
)

CONCERNS = (passthrough, codecs, multipart, registry, small_files, memory, first_byte, auth)

SCENARIOS: dict[str, Scenario] = {s.key: s for c in CONCERNS for s in c.SCENARIOS}

if len(SCENARIOS) != sum(len(c.SCENARIOS) for c in CONCERNS):
    raise RuntimeError("two scenarios share a key")
