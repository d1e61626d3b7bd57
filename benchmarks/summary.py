"""One scenario over its rounds: medians of rates and costs, the spread, the maximum of
memory. Figures are computed from these (`figure.py`), tables rendered from them
(`render.py`)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.scenario import Measurement

MiB = 2**20
GiB = 2**30
# the process trees of an upload's CPU columns: the client, the servers on the path, and
# every server not on it (`other`: their idle cost)
UPLOAD_ROLES = ("curl", "nginx", "gateway", "se", "other")


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

    def extra(self, name: str) -> Any:
        """The median of one `Measurement.extra` value over the rounds (None if absent)."""
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
            "median_cpu_s_per_gib": {r: round(self.cpu_per_gib(r), 3) for r in UPLOAD_ROLES},
            "median_gateway_loop_thread_cpu_s_per_gib": self.loop_cpu_per_gib(),
            "gateway_peak_rss_bytes": self.gateway_peak_rss,
            "gateway_vmhwm_bytes": self.gateway_hwm,
            "runs": [asdict(m) | {"mb_s": round(m.mb_s, 2)} for m in self.runs],
        }


Summaries = Mapping[str, Summary]  # scenario key -> its summary, only scenarios that ran
