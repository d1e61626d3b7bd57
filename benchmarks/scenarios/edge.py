"""The edge (issue 10): 2 000 connections that each send half a request head and then
hold it (hh), on an instance of their own (`gateway-edge`, which lets the one bench
address hold them all) with the default header timeout. Figures: the gateway's RSS
growth while it holds them (peak over the tree, sampled every 50 ms, minus the idle RSS
just before), and how many were not closed within the header timeout (plus a second of
slack for closing 2 000 at once) — each should get its 408 and its end.
"""

from __future__ import annotations

import selectors
import socket
import time

from benchmarks.figure import Figure, Reading
from benchmarks.procstat import RssSampler, process_tree, rss_bytes, tree_cpu_seconds
from benchmarks.scenario import Bench, Measurement, Scenario
from benchmarks.stack import gateway_default
from benchmarks.summary import MiB, Summaries

SLACK_S = 1.0  # closing thousands of connections at one deadline takes a moment
EXTRA_WAIT_S = 30.0  # how long past the deadline the client waits for the last close


def _half_head(token: str) -> bytes:
    """The first half of a realistic upload head (~1 KiB whole): it never ends."""
    head = (
        "PUT /api/v1/files/held.bin HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        "Content-Length: 1048576\r\nX-Request-ID: bench-edge\r\n\r\n"
    ).encode()
    return head[: len(head) // 2]


def run_half_heads(bench: Bench) -> Measurement:
    count = 100 if bench.warm else bench.opts.edge_connections
    timeout = float(gateway_default("header_timeout_seconds"))
    gateway = bench.stack.gateway("gateway-edge")
    half = _half_head(bench.stack.user_token)
    pids = process_tree(gateway.pid)
    rss_before = rss_bytes(pids)
    cpu_before = tree_cpu_seconds(gateway.pid)
    selector = selectors.DefaultSelector()
    sent_at: dict[socket.socket, float] = {}
    closed_after: list[float] = []
    answered_408 = 0
    started = time.monotonic()
    with RssSampler(gateway.pid) as sampler:
        try:
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", gateway.port), 10)
                sock.sendall(half)
                sent_at[sock] = time.monotonic()
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, bytearray())
            held_s = time.monotonic() - started
            deadline = time.monotonic() + timeout + EXTRA_WAIT_S
            while len(closed_after) < count and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        chunk = sock.recv(65536)
                    except (ConnectionResetError, BlockingIOError):
                        chunk = b""
                    if chunk:
                        key.data.extend(chunk)
                        continue
                    closed_after.append(time.monotonic() - sent_at[sock])
                    answered_408 += key.data.startswith(b"HTTP/1.1 408 ")
                    selector.unregister(sock)
                    sock.close()
        finally:
            for sock in list(sent_at):
                sock.close()
            selector.close()
    wall = time.monotonic() - started
    unclosed = count - len(closed_after)
    late = sum(1 for s in closed_after if s > timeout + SLACK_S)
    return Measurement(
        key="hh",
        payload_bytes=count * len(half),
        wall_s=wall,
        cpu_s={"gateway": tree_cpu_seconds(gateway.pid) - cpu_before},
        gateway_peak_rss=sampler.peak,
        extra={
            "connections": count,
            "header_timeout_s": timeout,
            "opened_in_s": held_s,
            "gateway_rss_before_bytes": rss_before,
            "rss_growth_bytes": sampler.peak - rss_before,
            "not_closed_in_time": unclosed + late,
            "answered_408": answered_408,
            "closed_after_max_s": max(closed_after, default=None),
            "closed_after_min_s": min(closed_after, default=None),
        },
    )


SCENARIOS = (
    Scenario(
        "hh",
        "2 000 connections holding half a request head -> gateway-edge",
        run_half_heads,
        servers=("se", "gateway-edge"),
        rounds="once",
        uses_payload=False,
        table="none",
    ),
)


def rss_growth(s: Summaries) -> Reading | None:
    hh = s["hh"]
    growth = hh.extra("rss_growth_bytes")
    if growth is None:
        return None
    return Reading(
        f"issue 10. gateway RSS growth while {hh.extra('connections')} connections hold half"
        " a head",
        growth / MiB,
        None,
        "MiB",
        kind="absolute",
        note=(
            f"hh: idle RSS {hh.extra('gateway_rss_before_bytes') / MiB:.0f} MiB, peak"
            f" {(hh.gateway_peak_rss or 0) / MiB:.0f} MiB; {hh.extra('answered_408')} answered"
            f" 408, closed {hh.extra('closed_after_min_s'):.1f} to "
            f"{hh.extra('closed_after_max_s'):.1f} s after their bytes"
            f" (header timeout {hh.extra('header_timeout_s'):g} s)"
        ),
        chart="held heads RSS growth MiB",
    )


def not_closed_in_time(s: Summaries) -> Reading | None:
    hh = s["hh"]
    count = hh.extra("not_closed_in_time")
    if count is None:
        return None
    return Reading(
        f"issue 10. connections holding half a head not closed within the header timeout"
        f" (+{SLACK_S:g} s)",
        count,
        None,
        "",
        kind="absolute",
    )


FIGURES = (
    Figure("edge.rss_growth.half_heads", ("hh",), rss_growth),
    Figure("edge.not_closed.half_heads", ("hh",), not_closed_in_time),
)
