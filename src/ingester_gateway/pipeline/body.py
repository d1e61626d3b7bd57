"""The request body as an async iterator of pieces, read straight from ASGI `receive()`.

This is the hot path, so it is raw ASGI: one `receive()` per piece (uvicorn hands
over up to 64 KiB), byte counting against the declared length and the size limit,
and a cheap idle watchdog instead of a `wait_for` (which would cost a task per piece).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from starlette.types import Message, Receive

from ingester_gateway import errors
from ingester_gateway.errors import ApiError


def _interrupted() -> ApiError:
    return errors.SHUTTING_DOWN("the gateway is shutting down; retry the upload")


class ClientDisconnected(Exception):
    """The client went away before the body was complete."""


class BodyMeter(Protocol):
    """Counts body bytes as they arrive (fair use's byte quota) and may hold back the
    reading of more."""

    def count(self, nbytes: int) -> bool:
        """`nbytes` more arrived; True when `settle()` must be awaited before more is read."""
        ...

    async def settle(self) -> None:
        """Pass the counts on, and wait while the client is over its quota."""
        ...


def too_large(limit: int) -> ApiError:
    return errors.PAYLOAD_TOO_LARGE(f"upload exceeds the limit of {limit} bytes")


class RequestBody:
    """Yields body pieces; raises 413 past `limit`, 400 on a length mismatch,
    ClientDisconnected when the client goes away, 408 after `idle_timeout`."""

    def __init__(
        self,
        receive: Receive,
        *,
        content_length: int | None,
        limit: int,
        idle_timeout: float,
        gone: Callable[[], bool] | None = None,
        malformed: Callable[[], bool] | None = None,
        meter: BodyMeter | None = None,
    ) -> None:
        self._receive = receive
        self._meter = meter
        # The server's word on whether the client left (runtime/http.py's extension);
        # without it, a receive() that does not wait answers the question.
        self._gone_probe = gone
        # ... and on whether a disconnect means the body's framing broke (then a 400).
        self._malformed = malformed
        self.content_length = content_length
        self._limit = limit
        self._idle_timeout = idle_timeout
        self.bytes_received = 0
        self.started = False  # receive() was called: a 100-continue went out
        self.complete = False
        # The last message came in: a further `receive()` would wait for the response.
        self.fully_received = False
        self.timed_out = False
        self.interrupted = False  # the gateway is shutting down: take no more data
        self._task: asyncio.Task[Any] | None = None
        self._waiting_since: float | None = None
        self._gone = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        if self.complete:
            return
        loop = asyncio.get_running_loop()
        task = self._task = asyncio.current_task()
        watchdog = _IdleSweeper.for_loop(loop)
        watchdog.add(self, task)
        self.started = True
        meter = self._meter
        settle = False
        try:
            more = True
            while more:
                if self.interrupted:
                    raise _interrupted()
                if settle:  # paced before reading more, never after the last piece
                    settle = False
                    assert meter is not None
                    await meter.settle()
                self._waiting_since = loop.time()
                message = await self._receive()
                self._waiting_since = None
                if message["type"] != "http.request":
                    if self._malformed is not None and self._malformed():
                        raise errors.MALFORMED_REQUEST("the body's chunked framing is malformed")
                    raise ClientDisconnected()
                piece: bytes = message.get("body", b"")
                more = message.get("more_body", False)
                self.fully_received = not more
                if not more and self._gone_probe is None:
                    await self._keep_reading()
                if piece:
                    self.bytes_received += len(piece)
                    if self.bytes_received > self._limit:
                        raise too_large(self._limit)
                    if (
                        self.content_length is not None
                        and self.bytes_received > self.content_length
                    ):
                        raise errors.LENGTH_MISMATCH("body longer than Content-Length")
                    if meter is not None:
                        settle = meter.count(len(piece))
                    yield piece
            if self.content_length is not None and self.bytes_received != self.content_length:
                raise errors.LENGTH_MISMATCH("body shorter than Content-Length")
            self.complete = True
        except asyncio.CancelledError:
            if self.timed_out or self.interrupted:
                if task is not None:
                    task.uncancel()
                if self.interrupted:
                    raise _interrupted() from None
                raise errors.REQUEST_TIMEOUT(f"no body data for {self._idle_timeout:g} s") from None
            raise
        finally:
            self._task = None
            watchdog.discard(self)

    def interrupt(self) -> None:
        """Take no more data (the gateway drains): the reader fails with 503
        `shutting_down` at once if it waits on the client, else before its next read."""
        if self.interrupted or self.complete:
            return
        self.interrupted = True
        if self._waiting_since is not None and self._task is not None:
            self._task.cancel()

    async def _poll(self) -> Message | None:
        """One `receive()` that does not wait: a message if one is there, else None."""
        try:
            async with asyncio.timeout(0):
                return await self._receive()
        except TimeoutError:
            return None

    async def _keep_reading(self) -> None:
        # The body is in. uvicorn's receive() resumes reading before it waits, and the
        # last body data may have paused it again (flow control): a client's FIN would
        # then go unread until the next receive(). One that does not wait, now, keeps
        # the connection read while the SE stores the upload.
        message = await self._poll()
        if message is not None and message.get("type") == "http.disconnect":
            self._gone = True

    async def client_gone(self) -> bool:
        """Has the client left since its body was complete (so no one will read an
        answer)? After the body, receive() returns only for a disconnect."""
        if self._gone:
            return True
        if self._gone_probe is not None:
            return self._gone_probe()
        if not self.fully_received:
            return False
        message = await self._poll()
        self._gone = message is not None and message.get("type") == "http.disconnect"
        return self._gone

    def idle_for(self, now: float) -> float:
        since = self._waiting_since
        return 0.0 if since is None else now - since


class _IdleSweeper:
    """One timer per event loop, not one per upload: every few hundred milliseconds it
    cancels the reading task of each body that has waited on its client too long."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _IdleSweeper] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._bodies: dict[RequestBody, asyncio.Task[Any] | None] = {}
        self._interval = 0.25
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> _IdleSweeper:
        sweeper = cls._by_loop.get(loop)
        if sweeper is None:
            sweeper = cls._by_loop[loop] = cls(loop)
        return sweeper

    def add(self, body: RequestBody, task: asyncio.Task[Any] | None) -> None:
        self._bodies[body] = task
        interval = max(min(body._idle_timeout / 4, 0.25), 0.02)
        if interval < self._interval or self._handle is None:
            self._interval = min(self._interval, interval)
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_later(self._interval, self._sweep)

    def discard(self, body: RequestBody) -> None:
        self._bodies.pop(body, None)

    def _sweep(self) -> None:
        now = self._loop.time()
        for body, task in list(self._bodies.items()):
            if task is not None and body.idle_for(now) >= body._idle_timeout:
                body.timed_out = True
                del self._bodies[body]
                task.cancel()
        if self._bodies:
            self._handle = self._loop.call_later(self._interval, self._sweep)
        else:
            self._handle = None
            self._interval = 0.25


# How much of an unwanted body is read (and dropped) before an early answer.
DRAIN_SECONDS = 2.0
DRAIN_BYTES = 64 * 2**20


async def drain_body(
    receive: Receive, max_seconds: float = DRAIN_SECONDS, max_bytes: int = DRAIN_BYTES
) -> None:
    """Read and drop what the client still sends, bounded, so an early error
    response is not lost to a TCP reset when the connection closes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    drained = 0
    try:
        async with asyncio.timeout_at(deadline):
            while drained < max_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    return
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return
