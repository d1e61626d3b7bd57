"""The gateway's uvicorn protocol: bodies handed over in the app's batches, batches that
follow the app's block size as it changes, and reading paused once a batch is held; and
the edge: head bytes, fields, target and time bounded before any token is read, the
connection caps, and every refusal answered with the JSON envelope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from ingester_gateway.runtime.edge import Edge, EdgeLimits, Networks
from ingester_gateway.runtime.http import BATCH, BODY_ERROR, GONE, GatewayHttpProtocol
from tests.kit import run

PIECE = 64 * 1024


class Transport(asyncio.Transport):
    """Enough of a socket transport for the protocol: records writes and pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closing = False
        self.eof = False  # the write side was shut (half-close)
        self.peer = "127.0.0.1"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": (self.peer, 50000)}.get(name, default)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def _protocol(
    app: Any, peer: str = "127.0.0.1", keep_alive: float = 5.0, state: ServerState | None = None
) -> tuple[GatewayHttpProtocol, Transport]:
    config = Config(app=app, log_config=None, lifespan="off", timeout_keep_alive=keep_alive)
    protocol = GatewayHttpProtocol(
        config=config,
        server_state=state or ServerState(),
        app_state={},
        _loop=asyncio.get_running_loop(),
    )
    transport = Transport()
    transport.peer = peer
    protocol.connection_made(transport)
    return protocol, transport


def _head(length: int) -> bytes:
    return b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % length


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_body_handed_over_in_batches_that_follow_the_apps_block_size() -> None:
    run(_body_handed_over_in_batches_that_follow_the_apps_block_size())


async def _body_handed_over_in_batches_that_follow_the_apps_block_size() -> None:
    sizes = [4 * PIECE, 4 * PIECE, 2 * PIECE]  # the app's block size, one read per hand-over
    received: list[int] = []
    done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        extensions = scope["extensions"]
        assert extensions[GONE]() is False
        extensions[BATCH](lambda: sizes.pop(0) if len(sizes) > 1 else sizes[0])
        more = True
        while more:
            message = await receive()
            received.append(len(message["body"]))
            more = message["more_body"]
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        done.set()

    protocol, transport = _protocol(app)
    total = 12 * PIECE
    protocol.data_received(_head(total))
    await _settle()
    for _ in range(12):
        protocol.data_received(b"x" * PIECE)
        await _settle()
    await asyncio.wait_for(done.wait(), 5)
    # Four pieces, four pieces, then two at a time once the block size fell.
    assert received == [4 * PIECE, 4 * PIECE, 2 * PIECE, 2 * PIECE]
    assert transport.written.startswith(b"HTTP/1.1 201")


def test_reading_pauses_while_a_full_batch_waits_for_the_app() -> None:
    run(_reading_pauses_while_a_full_batch_waits_for_the_app())


async def _reading_pauses_while_a_full_batch_waits_for_the_app() -> None:
    release = asyncio.Event()
    received: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["extensions"][BATCH](lambda: 2 * PIECE)
        await release.wait()  # the app is busy: the batch stays with the protocol
        more = True
        while more:
            message = await receive()
            received.append(len(message["body"]))
            more = message["more_body"]
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = _protocol(app)
    protocol.data_received(_head(8 * PIECE))
    await _settle()
    for _ in range(4):
        protocol.data_received(b"y" * PIECE)
    # A batch and more than a piece are held: the socket is not read any further.
    assert transport.reading is False
    release.set()
    await _settle()
    assert transport.reading is True
    for _ in range(4):
        protocol.data_received(b"y" * PIECE)
        await _settle()
    await _settle()
    assert sum(received) == 8 * PIECE
    assert received[0] == 4 * PIECE  # everything held was handed over at once, joined


def test_a_partial_batch_is_handed_over_after_a_moment() -> None:
    run(_a_partial_batch_is_handed_over_after_a_moment())


async def _a_partial_batch_is_handed_over_after_a_moment() -> None:
    received: list[bytes] = []
    first = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["extensions"][BATCH](lambda: 16 * PIECE)
        message = await receive()
        received.append(message["body"])
        first.set()
        while message["more_body"]:
            message = await receive()
            received.append(message["body"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol, _ = _protocol(app)
    protocol.data_received(_head(3 * 1000))
    await _settle()
    protocol.data_received(b"a" * 1000)
    # A slow client is not kept waiting for a full batch.
    await asyncio.wait_for(first.wait(), 1)
    assert received == [b"a" * 1000]
    protocol.data_received(b"b" * 2000)
    await _settle()
    assert b"".join(received) == b"a" * 1000 + b"b" * 2000


# -- the edge ---------------------------------------------------------------------------


class Observed:
    """The edge's reports, as the metrics would count them."""

    def __init__(self) -> None:
        self.refusals: list[str] = []
        self.open = 0

    def refused(self, reason: str) -> None:
        self.refusals.append(reason)

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1


@pytest.fixture
def observed() -> Iterator[Observed]:
    """The protocol's edge with small limits (and restored after the test)."""
    seen = Observed()
    default = GatewayHttpProtocol.edge
    limits = EdgeLimits(
        max_header_bytes=4096,
        max_header_count=10,
        max_request_line_bytes=1024,
        header_timeout=0.2,
        max_connections=3,
        max_connections_per_client=2,
        uncapped_peers=Networks(["10.0.0.0/8"]),
        linger_seconds=0.05,
    )
    GatewayHttpProtocol.edge = Edge(limits, seen)
    try:
        yield seen
    finally:
        GatewayHttpProtocol.edge = default


async def never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("a refused request reached the app")


async def answer_204(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _refusal(transport: Transport) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON error of what the edge wrote."""
    head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    return int(status_line.split()[1]), headers, json.loads(body)["error"]


class Fed:
    """Counts what the protocol hands to httptools."""

    def __init__(self, protocol: GatewayHttpProtocol) -> None:
        self.sizes: list[int] = []
        feed = protocol.parser.feed_data

        def counting(data: Any) -> None:
            self.sizes.append(len(data))
            feed(data)

        protocol.parser = _Parser(protocol.parser, counting)


class _Parser:
    def __init__(self, parser: Any, feed: Any) -> None:
        self._parser = parser
        self.feed_data = feed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def test_a_head_past_the_limit_is_431_and_the_parser_never_holds_more(
    observed: Observed,
) -> None:
    run(_a_head_past_the_limit_is_431_and_the_parser_never_holds_more(observed))


async def _a_head_past_the_limit_is_431_and_the_parser_never_holds_more(
    observed: Observed,
) -> None:
    protocol, transport = _protocol(never_called)
    fed = Fed(protocol)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
    for _ in range(256):  # 1 MiB of one header field
        protocol.data_received(b"a" * 4096)
    status, headers, error = _refusal(transport)
    assert (status, error["code"]) == (431, "header_too_large")
    assert "4096 bytes" in error["message"]
    assert headers["x-request-id"] == error["request_id"]
    assert sum(fed.sizes) == 4096  # the rest was dropped unparsed
    assert transport.eof  # the client reads the answer and an end
    await asyncio.sleep(0.1)  # the linger
    assert transport.closing
    assert observed.refusals == ["header_too_large"]


def test_a_head_that_fits_is_parsed_with_its_body_from_the_same_read(
    observed: Observed,
) -> None:
    run(_a_head_that_fits_is_parsed_with_its_body_from_the_same_read(observed))


async def _a_head_that_fits_is_parsed_with_its_body_from_the_same_read(
    observed: Observed,
) -> None:
    got: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        got.append(message["body"])
        while message["more_body"]:
            message = await receive()
            got.append(message["body"])
        await answer_204(scope, receive, send)

    protocol, transport = _protocol(app)
    head = b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 20000\r\n\r\n"
    # One read far larger than the head limit: the head, then body past the limit.
    protocol.data_received(head + b"b" * 20000)
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert b"".join(got) == b"b" * 20000
    assert transport.written.startswith(b"HTTP/1.1 204")
    assert observed.refusals == []


@pytest.mark.parametrize(
    ("head", "status", "code", "reason"),
    [
        (b"GET /" + b"p" * 2000 + b" HTTP/1.1\r\n", 414, "request_line_too_long", None),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(11)) + b"\r\n",
            431,
            "header_too_large",
            "too_many_headers",
        ),
        (
            b"GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n",
            400,
            "repeated_header",
            None,
        ),
        (
            b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            "unsupported_transfer_coding",
            "transfer_coding",
        ),
        (b"GET / HTTP/1.1\r\nHost t\r\n\r\n", 400, "malformed_request", None),
    ],
)
def test_a_head_that_breaks_a_rule_is_answered_before_any_route(
    observed: Observed, head: bytes, status: int, code: str, reason: str | None
) -> None:
    async def scenario() -> None:
        protocol, transport = _protocol(never_called)
        protocol.data_received(head)
        await asyncio.sleep(0)
        got_status, _, error = _refusal(transport)
        assert (got_status, error["code"]) == (status, code)
        assert observed.refusals == [reason or code]

    run(scenario())


def test_a_head_trickling_in_is_408_at_its_deadline_from_the_first_byte(
    observed: Observed,
) -> None:
    run(_a_head_trickling_in_is_408_at_its_deadline_from_the_first_byte(observed))


async def _a_head_trickling_in_is_408_at_its_deadline_from_the_first_byte(
    observed: Observed,
) -> None:
    protocol, transport = _protocol(never_called)
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 400
    # A byte every 20 ms, ten times faster than the 0.2 s deadline: a deadline that
    # restarted with each read would never pass.
    for byte in head:
        if transport.written:
            break
        protocol.data_received(bytes([byte]))
        await asyncio.sleep(0.02)
    status, _, error = _refusal(transport)
    assert (status, error["code"]) == (408, "header_timeout")
    assert observed.refusals == ["header_timeout"]


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout(
    observed: Observed,
) -> None:
    async def scenario() -> None:
        _, transport = _protocol(never_called, keep_alive=0.05)
        for _ in range(100):
            if transport.closing:
                break
            await asyncio.sleep(0.02)
        assert transport.closing
        assert transport.written == b""  # nothing was asked: nothing is answered
        assert observed.refusals == ["idle_timeout"]

    run(scenario())


def test_connections_are_capped_per_client_address_and_per_process(observed: Observed) -> None:
    run(_connections_are_capped_per_client_address_and_per_process(observed))


async def _connections_are_capped_per_client_address_and_per_process(
    observed: Observed,
) -> None:
    state = ServerState()
    first, _ = _protocol(answer_204, state=state)
    _protocol(answer_204, state=state)
    third, refused = _protocol(answer_204, state=state)  # the same address, once too often
    status, headers, error = _refusal(refused)
    assert (status, error["code"]) == (429, "too_many_client_connections")
    assert headers["retry-after"]
    third.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # dropped, not served
    assert refused.written.count(b"HTTP/1.1") == 1
    third.connection_lost(None)
    assert observed.open == 2  # a refused connection was never counted in

    _protocol(answer_204, peer="10.1.2.3", state=state)  # a proxy's address: not capped
    _, full = _protocol(answer_204, peer="192.0.2.7", state=state)
    status, _, error = _refusal(full)
    assert (status, error["code"]) == (503, "too_many_connections")

    first.connection_lost(None)  # a slot is free again
    _, admitted = _protocol(answer_204, peer="192.0.2.7", state=state)
    assert admitted.written == b""
    assert observed.refusals == ["client_connection_limit", "connection_limit"]


def test_a_malformed_chunked_body_is_reported_to_the_app_that_watches(
    observed: Observed,
) -> None:
    run(_a_malformed_chunked_body_is_reported_to_the_app_that_watches(observed))


async def _a_malformed_chunked_body_is_reported_to_the_app_that_watches(
    observed: Observed,
) -> None:
    seen: list[tuple[str, bool]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        malformed = scope["extensions"][BODY_ERROR]()
        message = await receive()
        while message["type"] == "http.request" and message["more_body"]:
            message = await receive()
        seen.append((message["type"], malformed()))
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    protocol, transport = _protocol(app)
    protocol.data_received(
        b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n"
    )
    for _ in range(10):
        await asyncio.sleep(0.01)
    assert seen == [("http.disconnect", True)]
    assert transport.written.startswith(b"HTTP/1.1 400")  # the app's own answer went out
    assert transport.closing  # and the connection ends with it
    assert observed.refusals == ["malformed_request"]


def test_a_trailer_past_the_head_limit_ends_the_request(observed: Observed) -> None:
    async def scenario() -> None:
        protocol, transport = _protocol(answer_204)
        fed = Fed(protocol)
        protocol.data_received(
            b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: "
        )
        for _ in range(64):
            protocol.data_received(b"t" * 1024)
        assert observed.refusals == ["header_too_large"]
        assert sum(fed.sizes) < 2 * 4096 + 1024  # dropped once past the limit
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert transport.closing  # the request ends with its answer

    run(scenario())


def test_a_refused_pipelined_request_waits_for_the_response_in_progress(
    observed: Observed,
) -> None:
    run(_a_refused_pipelined_request_waits_for_the_response_in_progress(observed))


async def _a_refused_pipelined_request_waits_for_the_response_in_progress(
    observed: Observed,
) -> None:
    release = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await answer_204(scope, receive, send)

    protocol, transport = _protocol(slow)
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost t\r\n\r\n")
    await asyncio.sleep(0.01)
    assert transport.written == b""  # the first response is not cut into
    release.set()
    for _ in range(10):
        await asyncio.sleep(0.01)
    first, _, second = bytes(transport.written).partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 204")
    assert second.startswith(b"HTTP/1.1 400")
    assert observed.refusals == ["malformed_request"]
