"""The edge of a real gateway, over raw sockets: heads too large, heads that never end,
connection caps, and the header rules every route shares. Nothing here reaches auth."""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.kit import (
    DevKeys,
    assert_error_envelope,
    http_call,
    raw_exchange,
    scrape,
    status_of,
)
from tests.stack import Stack, own_stack, rss_bytes

HEADER_TIMEOUT = 2.0  # seconds, short for the test (default 10)
MiB = 2**20


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    """A gateway whose single client address (the test's) may hold many connections."""
    env = {
        "INGESTER_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "INGESTER_MAX_CONNECTIONS_PER_CLIENT": "2000",
    }
    with own_stack(tmp_path_factory.mktemp("edge"), keys, env=env) as stack:
        yield stack


def _error_of(response: bytes) -> dict[str, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close\r\n" in head.lower() + b"\r\n", head
    return dict(json.loads(body)["error"])


def test_a_1_mib_header_is_431_and_closed_and_memory_stays_flat(edge: Stack) -> None:
    request = b"PUT /api/v1/files/x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * MiB + b"\r\n\r\n"

    def one(_: int) -> bytes:
        return raw_exchange(edge.gw, request, until_close=True)

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(one, range(20)))  # warm: the allocator's arenas, the code paths
        before = rss_bytes(edge.gw)
        answers = list(pool.map(one, range(200)))
        after = rss_bytes(edge.gw)
    for response in answers:  # each read up to the server's close: an answer, then the end
        assert status_of(response) == 431, response[:200]
        assert _error_of(response)["code"] == "header_too_large"
    # 200 x 1 MiB went by; the gateway held at most the 64 KiB limit of each at a time.
    assert after - before < 16 * MiB, (before, after)
    assert scrape(edge.gw).value("ingester_edge_rejections_total", reason="header_too_large") >= 220


def test_half_headers_are_all_closed_at_the_header_timeout_while_uploads_go_on(
    edge: Stack,
) -> None:
    count = 500
    half = b"PUT /api/v1/files/slow.bin HTTP/1.1\r\nHost: t\r\nAuthoriz"
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytearray] = {}
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", edge.gw.port), 10)
            sock.sendall(half)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            received[sock] = bytearray()
        held_at = time.monotonic()
        # Meanwhile a real client uploads as usual.
        upload = edge.put(b"u" * 300_000, "during.bin")
        assert upload.status == 201, upload.body[:300]
        open_ = set(received)
        deadline = held_at + HEADER_TIMEOUT + 60  # generous: a shared 2-core machine
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[sock] += chunk
                else:
                    selector.unregister(sock)
                    open_.discard(sock)
        assert not open_, f"{len(open_)} of {count} connections still open"
    finally:
        for sock in received:
            sock.close()
        selector.close()
    statuses = [status_of(bytes(answer)) for answer in received.values()]
    assert statuses == [408] * count
    assert _error_of(bytes(next(iter(received.values()))))["code"] == "header_timeout"
    metrics = scrape(edge.gw)
    assert metrics.value("ingester_edge_rejections_total", reason="header_timeout") >= count
    assert metrics.value("ingester_edge_connections") <= 2  # this scrape, maybe a probe


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/files/a.bin"),
        ("POST", "/api/v1/files/upload"),
        ("GET", "/api/v1/uploads/some-upload-id"),
        ("POST", "/api/v1/finalize/some-file-id"),
        ("GET", "/api/v1/finalize/some-transaction/status"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
    ],
)
def test_a_repeated_authorization_header_is_400_on_every_route(
    edge: Stack, keys: DevKeys, method: str, path: str
) -> None:
    token = keys.token()
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
        f"Authorization: Bearer {keys.token(sub='mallory')}\r\nContent-Length: 3\r\n\r\nabc"
    ).encode()
    response = raw_exchange(edge.gw, request)
    assert status_of(response) == 400
    assert _error_of(response)["code"] == "repeated_header"


def test_a_coded_chunked_body_is_501_and_not_stored(edge: Stack, keys: DevKeys) -> None:
    before = edge.stored_ids()
    token = keys.token()
    body = b"5\r\nhello\r\n0\r\n\r\n"
    request = (
        "PUT /api/v1/files/coded.bin HTTP/1.1\r\nHost: t\r\n"
        f"Authorization: Bearer {token}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    ).encode() + body
    response = raw_exchange(edge.gw, request)
    assert status_of(response) == 501
    assert _error_of(response)["code"] == "unsupported_transfer_coding"
    assert edge.stored_ids() == before


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    env = {
        "INGESTER_MAX_CONNECTIONS": "6",
        "INGESTER_MAX_CONNECTIONS_PER_CLIENT": "3",
        # The held connections send nothing: long enough that none is closed as idle.
        "INGESTER_KEEPALIVE_TIMEOUT_SECONDS": "120",
    }
    with own_stack(tmp_path_factory.mktemp("capped"), keys, env=env) as stack:
        yield stack


def _hold(stack: Stack, source: str) -> socket.socket:
    """An idle connection from `source`, admitted (nothing is answered to it yet)."""
    sock = socket.create_connection(("127.0.0.1", stack.gw.port), 10, (source, 0))
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    return sock


def test_connections_past_a_cap_are_refused_with_a_json_answer(capped: Stack) -> None:
    held: list[socket.socket] = []
    try:
        held += [_hold(capped, "127.0.0.2") for _ in range(3)]
        refused = raw_exchange(
            capped.gw, b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n", "127.0.0.2"
        )
        assert status_of(refused) == 429
        assert _error_of(refused)["code"] == "too_many_client_connections"
        assert b"\r\nretry-after: " in refused.lower()
        # Another address is still served, until the process holds its cap.
        held += [_hold(capped, "127.0.0.3") for _ in range(3)]
        full = raw_exchange(capped.gw, b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n", "127.0.0.4")
        assert status_of(full) == 503
        assert _error_of(full)["code"] == "too_many_connections"
        held.pop().close()  # a slot comes free
        live = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            live = http_call(capped.gw, "GET", "/health/live", timeout=5)
            if live.status == 200:
                break
            time.sleep(0.1)
        assert live is not None and live.status == 200
        metrics = scrape(capped.gw)
        assert metrics.value("ingester_edge_rejections_total", reason="connection_limit") >= 1
        refused_here = metrics.value(
            "ingester_edge_rejections_total", reason="client_connection_limit"
        )
        assert refused_here >= 1
        assert metrics.value("ingester_edge_connections") >= 5  # the held ones, and this one
    finally:
        for sock in held:
            sock.close()


def test_a_refusal_is_the_catalogues_envelope(edge: Stack) -> None:
    answer = http_call(edge.gw, "GET", "/" + "p" * 9000, timeout=10)
    assert_error_envelope(answer, 414, "request_line_too_long")
