"""Text for people: the console line of each measurement, the markdown tables (figures
with their verdicts, uploads, references, small files, uploads made on the fly), the
targets line and the whole of latest.md. Numbers come in computed (`summary.py`,
`figure.py`) and judged (`targets.py`); nothing here decides anything."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.machine import Machine
from benchmarks.scenario import Measurement
from benchmarks.summary import UPLOAD_ROLES, GiB, MiB, Summaries, Summary, human_size
from benchmarks.targets import Row, tally


def progress_line(m: Measurement) -> str:
    """One measurement, as the console shows it while the run goes on."""
    x = m.extra
    if "requests_per_s" in x:
        return (
            f"{m.key}: {x['requests_per_s']:.0f} req/s, p50 {x['p50_ms']:.1f} ms,"
            f" p99 {x['p99_ms']:.1f} ms, non-201 {x['non_201']}, stored {x['stored']},"
            f" CPU-s per 1000: {x['server']} {x['server_cpu_per_1000_s']:.2f},"
            f" SE {x['cpu_per_1000_s'].get('se', 0):.2f}, wrk {x['cpu_per_1000_s']['client']:.2f}"
        )
    if "uncached" in x:
        return (
            f"{m.key}: verify_header {x['uncached']['us_per_request']:.1f} µs without the cache,"
            f" {x['cached']['us_per_request']:.2f} µs with it"
        )
    if "ref" in m.cpu_s:
        ratio = x.get("compression_ratio")
        comp = f", {ratio:.2f}x" if ratio else ""
        return f"{m.key}: {m.mb_s:7.1f} MB/s, {m.cpu_per_gib('ref'):.2f} CPU-s/GiB{comp}"
    if "patches" in x:
        stored = x.get("stored_s")
        return (
            f"{m.key}: {m.mb_s:7.1f} MB/s ({m.wall_s:.2f} s, {x['patches']} PATCHes)"
            + ("" if stored is None else f", stored after {stored:.2f} s")
            + f"  CPU-s/GiB client {m.cpu_per_gib('client'):.2f}, {x['server']}"
            f" {m.cpu_per_gib('gateway'):.2f}, SE {m.cpu_per_gib('se'):.2f},"
            f" other {m.cpu_per_gib('other'):.2f}, {x['server']} RSS"
            f" {(m.gateway_peak_rss or 0) / MiB:.0f} MiB"
        )
    if "client" in m.cpu_s:
        delay = x.get("first_byte_delay_ms")
        return (
            f"{m.key}: {x['ok']} x {human_size(x['size_each'])} ok, {m.mb_s:.0f} MB/s"
            f" ({m.wall_s:.1f} s), gateway peak RSS {(m.gateway_peak_rss or 0) / MiB:.0f} MiB,"
            f" CPU-s/GiB client {m.cpu_per_gib('client'):.2f}"
            f" gateway {m.cpu_per_gib('gateway'):.2f} SE {m.cpu_per_gib('se'):.2f}"
            + ("" if delay is None else f", first byte at the SE after {delay:.1f} ms")
        )
    cells = []
    for role in UPLOAD_ROLES:
        cell = f"{role} {m.cpu_per_gib(role):.2f}"
        loop = m.extra.get("gateway_loop_cpu_s")
        if role == "gateway" and loop is not None and m.cpu_per_gib(role) >= 0.1:
            cell += f" (loop {loop * GiB / m.payload_bytes:.2f})"
        cells.append(cell)
    rss = "" if m.gateway_peak_rss is None else f", gateway RSS {m.gateway_peak_rss / MiB:.0f} MiB"
    return f"{m.key}: {m.mb_s:7.1f} MB/s ({m.wall_s:.2f} s)  CPU-s/GiB {', '.join(cells)}{rss}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# -- the figures and their verdicts ----------------------------------------------------


def _number(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:.0f} {unit}".strip()
    if abs(v) >= 1 or v == 0:
        return f"{v:.2f} {unit}".strip()
    return f"{v:.3f} {unit}".strip()


def figure_cells(row: Row) -> list[str]:
    r = row.reading
    ratio = r.ratio
    return [
        r.label,
        _number(r.gateway, r.unit),
        _number(r.reference, r.ref_unit or r.unit),
        "—" if ratio is None else f"{ratio:.3f}" if ratio < 0.1 else f"{ratio:.2f}",
        row.target_text(),
        {None: "—", True: "met", False: "**not met**"}[row.met],
    ]


def figures_table(rows: list[Row]) -> str:
    return markdown_table(
        ["figure", "gateway", "reference", "ratio", "target", "met?"],
        [figure_cells(r) for r in rows],
    )


def targets_line(rows: list[Row]) -> str:
    """`16 of 17 targets met (issue 2: 3 of 3, ...); not met: ...`, and the targets of
    the table this run did not measure."""
    per_issue = tally(rows)
    met = sum(t.met for t in per_issue.values())
    judged = sum(t.judged for t in per_issue.values())
    listed = sum(t.listed for t in per_issue.values())
    issues = ", ".join(
        f"{issue}: {t.met} of {t.judged}" if t.judged else f"{issue}: not measured"
        for issue, t in per_issue.items()
    )
    text = f"{met} of {judged} targets met ({issues})"
    missed = [
        f"{row.reading.label} ({v.target.issue})"
        for row in rows
        for v in row.verdicts
        if v.met is False
    ]
    if missed:
        text += "; not met: " + "; ".join(missed)
    if judged < listed:
        text += f"; {listed - judged} of the table's {listed} targets not measured in this run"
    return text


# -- the scenarios --------------------------------------------------------------------


def _spread(s: Summary) -> str:
    lo, hi = s.mb_s_range
    return f" ({lo:.0f}-{hi:.0f})" if len(s.runs) > 1 else ""


def _cpu_cell(s: Summary, role: str) -> str:
    text = f"{s.cpu_per_gib(role):.2f}"
    loop = s.loop_cpu_per_gib()
    if role == "gateway" and loop is not None and s.cpu_per_gib(role) >= 0.1:
        text += f" (loop {loop:.2f})"
    return text


def _rss_cell(s: Summary) -> str:
    rss, hwm = s.gateway_peak_rss, s.gateway_hwm
    return "—" if rss is None else f"{rss / MiB:.0f} / {(hwm or 0) / MiB:.0f}"


def uploads_table(summaries: Summaries) -> str:
    rows = [
        [
            f"{s.key}: {s.title}",
            f"{s.mb_s:.0f}{_spread(s)}",
            f"{s.wall_s:.2f}",
            *(_cpu_cell(s, r) for r in UPLOAD_ROLES),
            f"{sum(s.cpu_per_gib(r) for r in UPLOAD_ROLES):.2f}",
            _rss_cell(s),
        ]
        for s in summaries.values()
        if s.table == "upload"
    ]
    if not rows:
        return ""
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


def references_table(summaries: Summaries) -> str:
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
# Instances shown in the "gateway (1 worker)" column when they are the one on the path.
ONE_WORKER_GATEWAYS = frozenset({"gateway-w1", "gateway-reg", "gateway-fair", "gateway-fair-off"})


def _median_run(s: Summary) -> Measurement:
    """The run whose server CPU per 1000 is the median (a once-run scenario: its run)."""
    ranked = sorted(s.runs, key=lambda m: float(m.extra["server_cpu_per_1000_s"]))
    return ranked[(len(ranked) - 1) // 2]


def small_table(summaries: Summaries) -> str:
    rows = []
    for s in summaries.values():
        if s.table != "small":
            continue
        x = _median_run(s).extra
        per = dict(x["cpu_per_1000_s"])
        server = x["server"]
        if server not in SMALL_ROLES:  # another 1-worker instance (gateway-reg, -otel-w1)
            per["gateway-w1"] = per.get(server, 0.0)
            server = "gateway-w1"
        on_path = {server, "se", "client"}
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
                    for r in (
                        x["server"]
                        if role == "gateway-w1" and x["server"] in ONE_WORKER_GATEWAYS
                        else role
                        for role in SMALL_ROLES
                    )
                ),
                f"{sum(x['cpu_per_1000_s'].values()):.2f}",
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
            "CPU-s per 1000: gateway (1 worker, the one on the path)",
            "gateway (2 workers)",
            "baseline",
            "nginx",
            "SE",
            "wrk",
            "all",
        ],
        rows,
    )


def onthefly_table(summaries: Summaries) -> str:
    rows = []
    for s in summaries.values():
        if s.table != "onthefly":
            continue
        x = s.runs[0].extra
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
                _rss_cell(s),
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


def resumable_table(summaries: Summaries) -> str:
    rows = []
    for s in summaries.values():
        if s.table != "resumable":
            continue
        x = s.runs[0].extra
        stored = s.extra("stored_s")
        rows.append(
            [
                f"{s.key}: {s.title}",
                f"{x['server']}",
                f"{s.mb_s:.0f}{_spread(s)}",
                f"{s.wall_s:.2f}",
                "—" if stored is None else f"{stored:.2f}",
                f"{s.cpu_per_gib('client'):.2f}",
                _cpu_cell(s, "gateway"),
                f"{s.cpu_per_gib('se'):.2f}",
                f"{s.cpu_per_gib('other'):.2f}",
                _rss_cell(s),
            ]
        )
    if not rows:
        return ""
    return markdown_table(
        [
            "scenario",
            "server",
            "MB/s median (min-max)",
            "s to the last answer",
            "s until stored",
            "CPU-s/GiB client",
            "server",
            "SE",
            "other",
            "server peak RSS / VmHWM MiB",
        ],
        rows,
    )


def scenario_tables(summaries: Summaries, opts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(section title, table) of every per-scenario table with rows in this run; `opts`:
    the run's `scenario.Options`, as a dict."""
    sections = [
        ("Uploads through each path", uploads_table(summaries)),
        ("References: the libraries alone, same payloads", references_table(summaries)),
        (
            f"Small files: {opts.get('small_count', '?')} x {opts.get('small_size', '?')} B"
            f" multipart uploads, {opts.get('small_connections', '?')} connections,"
            " one JWT each (rotated), wrk",
            small_table(summaries),
        ),
        ("Uploads made on the fly (memory, first byte)", onthefly_table(summaries)),
        (
            "Resumable uploads: one client, 64 MiB PATCHes from a tmpfs file (sendfile)",
            resumable_table(summaries),
        ),
    ]
    return [(title, table) for title, table in sections if table]


# -- latest.md ------------------------------------------------------------------------


def render_markdown(
    summaries: Summaries,
    rows: list[Row],
    machine: Machine,
    settings: dict[str, Any],
    titles: Mapping[str, str],
) -> str:
    """latest.md. `titles`: scenario key -> title, for the scenarios that were skipped."""
    size = human_size(settings["size"])
    notes = [f"- {row.reading.label}: {row.reading.note}" for row in rows if row.reading.note]
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
        figures_table(rows),
        "",
        f"{targets_line(rows)}."
        + ("" if settings["size"] == GiB else " (The targets are set for 1 GiB uploads.)"),
        *(
            f"\n**Skipped {key}** ({titles.get(key, key)}): {reason}."
            for key, reason in settings.get("skipped", {}).items()
        ),
        *(["", *notes] if notes else []),
        "",
        "![ratios against their targets](latest.png)",
    ]
    for title, table in scenario_tables(summaries, settings.get("options", {})):
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
