"""RequestBody and drain_body against a scripted ASGI `receive`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ingester_gateway.errors import ApiError
from ingester_gateway.pipeline.body import ClientDisconnected, RequestBody, drain_body
from tests.kit import run

Message = dict[str, Any]


class Script:
    """A `receive` that plays messages in order (with optional delays), then hangs."""

    def __init__(self, *messages: Message, delay: float = 0.0) -> None:
        self.messages = list(messages)
        self.delay = delay
        self.calls = 0

    async def __call__(self) -> Message:
        self.calls += 1
        if not self.messages:
            await asyncio.Event().wait()  # a client that never sends again
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.messages.pop(0)


def piece(body: bytes, more: bool = True) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


DISCONNECT: Message = {"type": "http.disconnect"}


def read(
    receive: Callable[[], Awaitable[Message]],
    *,
    content_length: int | None = None,
    limit: int = 1 << 20,
    idle_timeout: float = 5.0,
) -> tuple[list[bytes], RequestBody]:
    async def scenario() -> tuple[list[bytes], RequestBody]:
        body = RequestBody(
            receive, content_length=content_length, limit=limit, idle_timeout=idle_timeout
        )
        return [p async for p in body], body

    return run(scenario())


def read_error(receive: Callable[[], Awaitable[Message]], **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        read(receive, **kwargs)
    return info.value


def test_pieces_are_yielded_in_order() -> None:
    pieces, body = read(Script(piece(b"ab"), piece(b""), piece(b"cd"), piece(b"e", more=False)))
    assert pieces == [b"ab", b"cd", b"e"]
    assert body.bytes_received == 5
    assert body.complete


def test_a_body_matching_its_content_length_is_complete() -> None:
    pieces, body = read(Script(piece(b"abc"), piece(b"de", more=False)), content_length=5)
    assert b"".join(pieces) == b"abcde"
    assert body.complete


def test_an_empty_body_yields_nothing() -> None:
    pieces, body = read(Script(piece(b"", more=False)), content_length=0)
    assert pieces == []
    assert body.complete


def test_a_body_over_the_limit_is_413() -> None:
    error = read_error(Script(piece(b"x" * 6), piece(b"x" * 6, more=False)), limit=10)
    assert (error.status, error.code) == (413, "payload_too_large")


def test_a_body_exactly_at_the_limit_is_accepted() -> None:
    pieces, _ = read(Script(piece(b"x" * 6), piece(b"x" * 4, more=False)), limit=10)
    assert sum(map(len, pieces)) == 10


def test_a_body_longer_than_its_content_length_is_400() -> None:
    error = read_error(Script(piece(b"abc"), piece(b"def", more=False)), content_length=4)
    assert (error.status, error.code) == (400, "length_mismatch")


def test_a_body_shorter_than_its_content_length_is_400() -> None:
    error = read_error(Script(piece(b"abc"), piece(b"", more=False)), content_length=4)
    assert (error.status, error.code) == (400, "length_mismatch")


def test_nothing_past_the_content_length_is_yielded() -> None:
    received: list[bytes] = []

    async def scenario() -> None:
        body = RequestBody(
            Script(piece(b"abc"), piece(b"def", more=False)),
            content_length=4,
            limit=100,
            idle_timeout=5,
        )
        async for p in body:
            received.append(p)

    with pytest.raises(ApiError):
        run(scenario())
    assert received == [b"abc"]


def test_a_disconnect_raises_client_disconnected() -> None:
    with pytest.raises(ClientDisconnected):
        read(Script(piece(b"abc"), DISCONNECT))


def test_a_silent_client_gets_408_after_the_idle_timeout() -> None:
    async def scenario() -> tuple[ApiError, float]:
        body = RequestBody(Script(piece(b"abc")), content_length=None, limit=100, idle_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(ApiError) as info:
            async for _ in body:
                pass
        elapsed = time.monotonic() - started
        await asyncio.sleep(0)  # the task is not left cancelled
        return info.value, elapsed

    error, elapsed = run(scenario())
    assert (error.status, error.code) == (408, "request_timeout")
    assert 0.2 <= elapsed < 2.0


def test_the_idle_timeout_counts_silence_not_total_time() -> None:
    script = Script(*[piece(b"x") for _ in range(6)], piece(b"", more=False), delay=0.06)
    started = time.monotonic()
    pieces, body = read(script, idle_timeout=0.2)
    assert time.monotonic() - started > 0.35  # longer than the timeout in total
    assert len(pieces) == 6 and body.complete


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def scenario() -> None:
        body = RequestBody(Script(piece(b"a")), content_length=None, limit=100, idle_timeout=5)

        async def consume() -> None:
            async for _ in body:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())


def test_a_complete_body_iterates_as_empty_again() -> None:
    async def scenario() -> list[bytes]:
        body = RequestBody(
            Script(piece(b"a", more=False)), content_length=None, limit=100, idle_timeout=5
        )
        first = [p async for p in body]
        assert first == [b"a"]
        return [p async for p in body]

    assert run(scenario()) == []


def test_drain_reads_until_the_body_ends() -> None:
    script = Script(piece(b"a"), piece(b"b"), piece(b"c", more=False), piece(b"never"))
    run(drain_body(script, max_seconds=1.0, max_bytes=100))
    assert script.calls == 3


def test_drain_stops_at_a_disconnect() -> None:
    script = Script(piece(b"a"), DISCONNECT, piece(b"never"))
    run(drain_body(script, max_seconds=1.0, max_bytes=100))
    assert script.calls == 2


def test_drain_stops_after_max_bytes() -> None:
    script = Script(*[piece(b"x" * 10) for _ in range(100)])
    run(drain_body(script, max_seconds=1.0, max_bytes=35))
    assert script.calls == 4


def test_drain_gives_up_after_max_seconds() -> None:
    script = Script(piece(b"a"))
    started = time.monotonic()
    run(drain_body(script, max_seconds=0.2, max_bytes=100))
    assert 0.15 <= time.monotonic() - started < 2.0
