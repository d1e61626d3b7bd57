"""uvicorn's httptools protocol, with request bodies handed over in the app's blocks.

uvicorn gathers the body data httptools gives it in a bytearray (`+=`: a copy), wakes
the app for every piece (up to 64 KiB) and hands it over as `bytes(...)` (a second
copy). Here the pieces are kept as httptools made them, and the app is woken once a
batch of its own size has arrived (the gateway asks for its block size, 1 MiB, less
under load) — or a moment after the last piece, so a slow client is never kept
waiting — and the batch is joined once: one copy, and a few wake-ups per MiB instead
of sixteen. The app's block reader then passes a whole batch on without joining it
again. Reading pauses once a batch and a piece are held (uvicorn: 64 KiB).

The app asks through two scope extensions: `ingester.body_batch(size)` sets the batch
(`size` is a callable, read again after each hand-over, so batches shrink as uploads
are added and the budget's share per upload falls),
`ingester.client_gone()` tells whether the client left (without a receive(): a poll
with a zero timeout costs a timer and a cancellation each time), `ingester.trailers()`
gives the trailer fields of a chunked body once it is in (uvicorn parses them into the
request's header list and hands them to no one; tus checksum-trailer needs them).

It is also the edge (`runtime/edge.py` holds the rules): httptools gathers a header
field whole before it reports it, so the bytes of a head are counted here, in
`data_received`, and the parser is never fed more of a head than the limit (431); the
request target (414) and the number of fields (431) are checked as the parser reports
them; a head must be complete within the header timeout from its first byte, however
slowly it trickles in (one timer per connection, armed only when a head does not come
whole in one read; 408); a connection that sends nothing is closed after the keep-alive
timeout, a new one too; the caps on connections per process and per client address are
applied when a connection is made (503 / 429). A refusal is answered with the JSON
envelope and `connection: close`, then what the client still sends is read and dropped
for a moment (so it sees the answer, not a reset), and the connection is closed.

Only the body handling and the edge change; uvicorn's own code does everything else.
Written against uvicorn 0.54's `httptools_impl` (the version range is pinned in
pyproject).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ingester_gateway.runtime.edge import (
    SINGLE_FIELDS,
    Edge,
    EdgeLimits,
    EdgeObserver,
    answer,
    plain_chunked,
)

GONE = "ingester.client_gone"
BATCH = "ingester.body_batch"
# `watch()` -> a probe: True once the body's framing turned out malformed (the app then
# answers 400 itself; an app that does not watch sees a disconnect).
BODY_ERROR = "ingester.body_error"
TRAILERS = "ingester.trailers"
# A batch not yet full is handed over this long after its first piece came.
WAKE_DELAY = 0.002


class _PieceCycle(RequestResponseCycle):
    """A request/response cycle whose body is a list of pieces, not a bytearray."""

    pieces: list[bytes]
    held: int
    batch: int  # wake the app once this many bytes are held
    batch_of: Callable[[], int] | None  # the app's current block size
    wake: asyncio.TimerHandle | None

    malformed: bool  # the body's framing broke: nothing more of it will come
    watched: bool  # the app asked to hear of that (BODY_ERROR)

    async def receive(self) -> ASGIReceiveEvent:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False

        if not self.disconnected and not self.response_complete and not self.malformed:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()

        if self.malformed and not self.disconnected:
            if not self.watched:  # no one will answer it: the connection just ends
                self.disconnected = True
                self.transport.close()
            return {"type": "http.disconnect"}
        if self.response_complete or (self.disconnected and not self.pieces):
            return {"type": "http.disconnect"}
        # A client that left may have sent data first: it is handed over before the
        # disconnect (a resumable upload keeps every byte that arrived).
        pieces = self.pieces
        if not pieces:
            body = b""
        elif len(pieces) == 1:
            body = pieces[0]
        else:
            body = b"".join(pieces)
        self.pieces = []
        self.held = 0
        if self.batch_of is not None:
            self.batch = max(HIGH_WATER_LIMIT, self.batch_of())
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    def set_batch(self, size: Callable[[], int]) -> None:
        self.batch_of = size
        self.batch = max(HIGH_WATER_LIMIT, size())

    def hand_over(self) -> None:
        if self.wake is not None:
            self.wake.cancel()
            self.wake = None
        self.message_event.set()

    def watch_body_error(self) -> Callable[[], bool]:
        self.watched = True
        return lambda: self.malformed


class _Refused(Exception):
    """Raised from a parser callback to stop parsing: the request breaks a rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GatewayHttpProtocol(HttpToolsProtocol):
    # The process's edge: default limits (the reference servers), or the gateway's
    # settings once its app is built (`configure_edge`).
    edge: ClassVar[Edge] = Edge(EdgeLimits())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edge = self.edge
        self._in_head = True  # between requests, or reading one's head
        self._head_bytes = 0  # of the head being read
        self._heads = 0  # heads completed on this connection
        self._head_begun = False  # the parser has seen a byte of the head being read
        self._body_bytes = 0  # body data the parser gave (all requests)
        self._framing = 0  # bytes of the current body that were not body data
        self._head_timer: asyncio.TimerHandle | None = None
        self._seen = 0  # bits of SINGLE_FIELDS seen in this head
        self._counted = False  # admitted under the connection caps
        self._refused = False  # answered by the edge: input is dropped until the close
        self._deferred: str | None = None  # a refusal waiting for the response in progress
        self._peer: str | None = None

    # -- connections -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else None
        refusal = self._edge.connections.admit(peer)
        if refusal is not None:
            self._refuse(refusal)
            return
        self._counted = True
        self._peer = peer
        self._edge.observer.opened()
        # A connection that never sends a byte is idle like one between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._edge.connections.release(self._peer)
            self._edge.observer.closed()
        self._stop_head_timer()
        super().connection_lost(exc)

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self._edge.observer.refused("idle_timeout")
        super().timeout_keep_alive_handler()

    # -- bytes in ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered (or about to be): what still comes is dropped unread
        self._unset_keepalive_if_required()
        limit = self._edge.limits.max_header_bytes
        chunk: bytes | memoryview = data
        while self._in_head:
            room = limit - self._head_bytes
            if len(chunk) <= room:
                self._head_bytes += len(chunk)
                self._feed(chunk)
                break
            # More than the head may still take: the parser gets what fits, and the rest
            # only if the head ended within it (the rest is then body, or a next request).
            heads = self._heads
            view = memoryview(chunk)
            self._head_bytes = limit
            if room:
                self._feed(view[:room])
            if self._refused or self.transport.is_closing():
                return
            if self._heads == heads:
                self._refuse("header_too_large")
                return
            chunk = view[room:]
        else:
            self._feed_body(chunk, limit)
        begun = self._head_begun or self._head_bytes  # (empty lines count, as slowloris)
        if self._in_head and begun and self._head_timer is None and not self._refused:
            # A head that did not come whole: its deadline counts from now, the read that
            # brought its first byte, however slowly the rest trickles in.
            self._head_timer = self.loop.call_later(
                self._edge.limits.header_timeout, self._header_timed_out
            )

    def _feed_body(self, chunk: bytes | memoryview, limit: int) -> None:
        """Body bytes; httptools gathers a chunked body's trailer fields as it gathers
        header fields, so what is not body data (framing, trailers) is bounded too."""
        before = self._body_bytes
        self._feed(chunk)
        delivered = self._body_bytes - before
        self._framing = len(chunk) - delivered if delivered else self._framing + len(chunk)
        if self._framing > limit and not self._in_head and not self._refused:
            self._refuse("header_too_large")

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._refuse(cause.reason if isinstance(cause, _Refused) else "malformed_request")

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._seen = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self._edge.limits.max_request_line_bytes:
            raise _Refused("request_line_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers = self.headers
        headers.append((name, value))
        if len(headers) > self._edge.limits.max_header_count:
            raise _Refused("too_many_headers")
        bit = SINGLE_FIELDS.get(name)
        if bit is not None:
            if self._seen & bit:
                raise _Refused("repeated_header")
            self._seen |= bit
            if name == b"transfer-encoding" and not plain_chunked(value):
                raise _Refused("transfer_coding")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_begun = False
        self._heads += 1
        self._framing = 0
        self._stop_head_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            # Before the app's task first runs: nothing has read the body yet.
            cycle.__class__ = _PieceCycle
            assert isinstance(cycle, _PieceCycle)
            cycle.pieces = []
            cycle.held = 0
            cycle.batch = HIGH_WATER_LIMIT  # uvicorn's pace until the app asks for more
            cycle.batch_of = None
            cycle.wake = None
            cycle.malformed = False
            cycle.watched = False
            scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
            extensions = scope.setdefault("extensions", {})
            extensions[GONE] = lambda: cycle.disconnected
            extensions[BATCH] = cycle.set_batch
            extensions[BODY_ERROR] = cycle.watch_body_error
            # httptools reports trailer fields through on_header, after the headers.
            headers, count = self.headers, len(self.headers)
            extensions[TRAILERS] = lambda: headers[count:]

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        if not isinstance(cycle, _PieceCycle):  # never swapped: uvicorn's own way
            super().on_body(body)
            return
        cycle.pieces.append(body)
        cycle.held += len(body)
        if cycle.held >= cycle.batch:
            if cycle.held > cycle.batch + HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            cycle.hand_over()
        elif cycle.wake is None:
            cycle.wake = self.loop.call_later(WAKE_DELAY, cycle.hand_over)

    def on_message_complete(self) -> None:
        self._in_head = True  # what follows is the next request's head
        self._head_bytes = 0
        super().on_message_complete()
        cycle = self.cycle
        if isinstance(cycle, _PieceCycle):
            cycle.hand_over()
        # The body is in: keep reading, so a client that leaves now is seen at once
        # (uvicorn would wait for the app's next receive(); a pipelined request is
        # held back by uvicorn as before).
        self.flow.resume_reading()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        deferred = self._deferred
        if deferred is not None and not self._responding():
            self._deferred = None
            self._answer(deferred)

    # -- refusals ----------------------------------------------------------------------

    def _responding(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def _header_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused:
            self._refuse("header_timeout")

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, reason: str) -> None:
        if self._refused:
            return
        self._refused = True
        self._stop_head_timer()
        self._unset_keepalive_if_required()
        self._edge.observer.refused(reason)
        cycle = self.cycle
        if not self._in_head and cycle is not None:
            # The body of the request being served broke: its app answers (400) if it
            # watches for that; the connection ends after this response either way.
            cycle.keep_alive = False
            if isinstance(cycle, _PieceCycle) and not cycle.response_complete:
                cycle.malformed = True
                cycle.hand_over()
            else:
                self.transport.close()
            return
        if self._responding():
            # A refused next request: the response in progress goes out first.
            self._deferred = reason
            return
        self._answer(reason)

    def _answer(self, reason: str) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        self._unset_keepalive_if_required()
        response = answer(reason, self._edge.limits)
        if response is None:
            transport.close()
            return
        transport.write(response)
        # Half-close: the client reads the answer and an end, not a reset; what it
        # still sends is read and dropped for a moment, then the connection closes.
        if transport.can_write_eof():
            transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(self._edge.limits.linger_seconds, transport.close)


def configure_edge(limits: EdgeLimits, observer: EdgeObserver) -> None:
    """The limits and metrics of this process's edge (each worker calls it as its app is
    built, before it accepts a connection)."""
    GatewayHttpProtocol.edge = Edge(limits, observer)
