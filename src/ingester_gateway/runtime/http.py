"""uvicorn's httptools protocol, with request bodies handed over without copies.

uvicorn gathers the body data httptools gives it in a bytearray (`+=`: a copy) and
hands it to the app as `bytes(...)` (a second copy): for a 1 GiB upload that is 2 GiB
of memmove on the hot path, a fifth of the gateway's CPU. Here the pieces are kept
as httptools made them and joined only when several arrived between two `receive()`
calls: no copy, or one.

Only the body handling changes; uvicorn's own code does everything else. Written
against uvicorn 0.54's `httptools_impl` (the version range is pinned in pyproject).
"""

from __future__ import annotations

from typing import Any

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _PieceCycle(RequestResponseCycle):
    """A request/response cycle whose body is a list of pieces, not a bytearray."""

    pieces: list[bytes]
    held: int

    async def receive(self) -> ASGIReceiveEvent:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False

        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()

        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        pieces = self.pieces
        if not pieces:
            body = b""
        elif len(pieces) == 1:
            body = pieces[0]
        else:
            body = b"".join(pieces)
        self.pieces = []
        self.held = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}


# The scope extension through which the app asks whether the client has gone, without
# a receive() (a poll with a zero timeout costs a timer and a cancellation each time).
GONE = "ingester.client_gone"


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
            scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
            scope.setdefault("extensions", {})[GONE] = lambda: cycle.disconnected

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The body is in: keep reading, so a client that leaves now is seen at once
        # (uvicorn would wait for the app's next receive(); a pipelined request is
        # held back by uvicorn as before).
        self.flow.resume_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        if not isinstance(cycle, _PieceCycle):  # never swapped: uvicorn's own way
            super().on_body(body)
            return
        cycle.pieces.append(body)
        cycle.held += len(body)
        if cycle.held > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()
