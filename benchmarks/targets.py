"""Every figure's target, in one table, and the one function that judges the figures
against it.

A row names a figure by its key (declared in its concern module, `benchmarks/scenarios/`),
the comparison, the limit and the issue that asked for it. What is compared is the
figure's `Reading.value`: gateway/reference for a ratio figure, the gateway's value (in
the figure's unit) for an absolute one. A figure may have several rows (issue 2's bar
and issue 3's on the same pass-through ratio); a figure without a row is reported only.
The bars were set for the default sizes (1 GiB uploads, 20 000 small files, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from benchmarks.figure import Reading

Op = Literal[">=", "<=", "=="]
SIGNS: dict[str, str] = {">=": "≥", "<=": "≤", "==": "="}


@dataclass(frozen=True)
class Target:
    figure_key: str  # Figure.key
    op: Op
    limit: float
    issue: str  # the issue that asked for it, e.g. "issue 3"
    note: str = ""  # shown beside the limit, e.g. "option"

    def text(self, reading: Reading) -> str:
        """`≥ 0.60 (issue 3)`, `≤ 100 MiB (issue 2)`: the limit in the figure's terms."""
        if reading.kind == "absolute":
            shown = f"{self.limit:g} {reading.unit}".strip()
        else:
            shown = f"{self.limit:.2f}"
        why = ", ".join(x for x in (self.issue, self.note) if x)
        return f"{SIGNS[self.op]} {shown} ({why})"


TARGETS: tuple[Target, ...] = (
    # pass-through (1 GiB random): wall MB/s and CPU-s per GiB against nginx
    Target("passthrough.mb_s.gateway_vs_nginx", ">=", 0.6, "issue 3"),
    Target("passthrough.mb_s.gateway_vs_nginx", ">=", 0.4, "issue 2"),
    Target("passthrough.cpu.gateway_minus_sha256_vs_nginx", "<=", 1.5, "issue 3"),
    Target("passthrough.cpu.gateway_minus_sha256_vs_nginx", "<=", 1.2, "issue 7"),
    # codecs: the gateway's zstd against python-zstandard alone
    Target("codecs.zstd.mb_s.gateway_vs_library", ">=", 0.8, "issue 3"),
    Target("codecs.zstd.mb_s.threads2_gateway_vs_library", ">=", 0.8, "issue 3", "option"),
    # multipart against the raw PUT
    Target("multipart.mb_s.multipart_vs_raw", ">=", 0.9, "issue 3"),
    # nodes from Redis against the static registry
    Target("registry.mb_s.redis_vs_static", ">=", 0.95, "issue 4"),
    # 4 KiB uploads against the FastAPI baseline
    Target("small_files.cpu_per_1000.s1_vs_baseline", "<=", 0.1, "issue 3"),
    Target("small_files.p99.s1_vs_baseline", "<=", 0.2, "issue 3"),
    Target("small_files.cpu_per_1000.s2_vs_baseline", "<=", 0.1, "issue 3"),
    Target("small_files.p99.s2_vs_baseline", "<=", 0.2, "issue 3"),
    Target("small_files.non_201", "==", 0, "issue 3"),
    # registering every upload in the Admin Module against the same run without
    Target("small_files.cpu_per_1000.sr_vs_unregistered", "<=", 1.3, "issue 8"),
    Target("small_files.p99.sr_vs_unregistered", "<=", 1.5, "issue 8"),
    # fair use through Redis against the same instance with fair use off
    Target("small_files.cpu_per_1000.sf_vs_fair_use_off", "<=", 1.1, "issue 10"),
    # finalize: the copy against a plain streamed upload of the same bytes
    Target("finalize.mb_s.finalize_vs_upload", ">=", 0.8, "issue 8"),
    Target("finalize.peak_rss", "<=", 100, "issue 8"),
    # resumable uploads, 1 GiB in 64 MiB PATCHes: tus with a sha256 checksum on every PATCH
    # against @tus/server (no checksum), its time until stored against the streamed PUT,
    # the IETF draft against tus, and the gateway's peak RSS (MiB)
    Target("resumable.mb_s.tus_vs_tus_node", ">=", 1.2, "issue 9"),
    Target("resumable.stored_s.tus_vs_put", "<=", 1.5, "issue 9"),
    Target("resumable.mb_s.ietf_vs_tus", ">=", 0.9, "issue 9"),
    Target("resumable.peak_rss.tus", "<=", 100, "issue 9"),
    # tracing on (every upload, OTLP) against off: what the spans cost
    Target("tracing.cpu.passthrough_on_vs_off", "<=", 1.05, "issue 11"),
    Target("tracing.cpu_per_1000.small_on_vs_off", "<=", 1.15, "issue 11"),
    # gateway peak RSS, MiB
    Target("memory.peak_rss.passthrough", "<=", 100, "issue 2"),
    Target("memory.peak_rss.zstd", "<=", 100, "issue 2"),
    Target("memory.peak_rss.big", "<=", 100, "issue 3"),
    Target("memory.peak_rss.concurrent", "<=", 300, "issue 3"),
    # first file byte at the SE after the client's, ms
    Target("first_byte.delay_ms", "<=", 200, "issue 3"),
    # the edge: 2 000 connections holding half a head (RSS growth MiB; count)
    Target("edge.rss_growth.half_heads", "<=", 50, "issue 10"),
    Target("edge.not_closed.half_heads", "==", 0, "issue 10"),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    met: bool | None  # None: the figure has no value to compare


@dataclass(frozen=True)
class Row:
    """A figure as the report shows it: its reading and the verdict of each target."""

    key: str
    reading: Reading
    verdicts: tuple[Verdict, ...]

    @property
    def met(self) -> bool | None:
        """None when reported only (or not comparable), else whether all targets are met."""
        judged = [v.met for v in self.verdicts if v.met is not None]
        return all(judged) if judged else None

    def target_text(self) -> str:
        if not self.verdicts:
            return "reported"
        return "; ".join(v.target.text(self.reading) for v in self.verdicts)


def compare(value: float | None, op: Op, limit: float) -> bool | None:
    if value is None:
        return None
    if op == ">=":
        return value >= limit
    if op == "<=":
        return value <= limit
    return value == limit


def judge(readings: Mapping[str, Reading], table: Iterable[Target] = TARGETS) -> list[Row]:
    """Every figure that was computed, in order, with the verdict of each of its targets."""
    by_figure: dict[str, list[Target]] = {}
    for target in table:
        by_figure.setdefault(target.figure_key, []).append(target)
    return [
        Row(
            key,
            reading,
            tuple(
                Verdict(t, compare(reading.value, t.op, t.limit)) for t in by_figure.get(key, [])
            ),
        )
        for key, reading in readings.items()
    ]


def unknown_figures(known: Iterable[str], table: Iterable[Target] = TARGETS) -> list[str]:
    """Keys of the table that name no declared figure (a typo would be a target never judged)."""
    declared = set(known)
    return [t.figure_key for t in table if t.figure_key not in declared]


@dataclass(frozen=True)
class IssueTally:
    met: int
    judged: int  # targets of this issue judged in this run
    listed: int  # targets of this issue in the table

    @property
    def passed(self) -> bool | None:
        """Every target of the issue judged in this run met; None when none was judged."""
        return self.met == self.judged if self.judged else None


def tally(rows: Iterable[Row], table: Iterable[Target] = TARGETS) -> dict[str, IssueTally]:
    """Per issue, in table order: targets met, judged in this run, and listed."""
    verdicts = [v for row in rows for v in row.verdicts if v.met is not None]
    listed: dict[str, int] = {}
    for target in table:
        listed[target.issue] = listed.get(target.issue, 0) + 1
    issues = sorted(listed, key=lambda issue: [int(w) if w.isdigit() else w for w in issue.split()])
    return {
        issue: IssueTally(
            sum(1 for v in verdicts if v.target.issue == issue and v.met),
            sum(1 for v in verdicts if v.target.issue == issue),
            listed[issue],
        )
        for issue in issues
    }
