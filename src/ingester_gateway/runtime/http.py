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

Only the body handling changes; uvicorn's own code does everything else. Written
against uvicorn 0.54's `httptools_impl` (the version range is pinned in pyproject).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

GONE = "ingester.client_gone"
BATCH = "ingester.body_batch"
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

    async def receive(self) -> ASGIReceiveEvent:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False

        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()

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


class GatewayHttpProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
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
            scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
            extensions = scope.setdefault("extensions", {})
            extensions[GONE] = lambda: cycle.disconnected
            extensions[BATCH] = cycle.set_batch
            # httptools reports trailer fields through on_header, after the headers.
            headers, count = self.headers, len(self.headers)
            extensions[TRAILERS] = lambda: headers[count:]

    def on_body(self, body: bytes) -> None:
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
        super().on_message_complete()
        cycle = self.cycle
        if isinstance(cycle, _PieceCycle):
            cycle.hand_over()
        # The body is in: keep reading, so a client that leaves now is seen at once
        # (uvicorn would wait for the app's next receive(); a pipelined request is
        # held back by uvicorn as before).
        self.flow.resume_reading()
