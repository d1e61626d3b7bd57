"""The drain: who is refused, who is interrupted when, and a request body that stops
taking data when told."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ingester_gateway.errors import ApiError
from ingester_gateway.pipeline.body import RequestBody
from ingester_gateway.runtime.drain import Drain
from tests.kit import run


class Upload:
    """An upload that leaves `after` seconds after it is interrupted (its error path)."""

    def __init__(self, after: float = 0.0) -> None:
        self.after = after
        self.interrupted_at: float | None = None
        self.interrupted = asyncio.Event()

    def interrupt(self) -> None:
        if self.interrupted_at is None:
            self.interrupted_at = asyncio.get_running_loop().time()
        self.interrupted.set()


async def _hold(drain: Drain, upload: Upload, resumable: bool = False, lasts: float = 60.0) -> str:
    """Runs until done after `lasts` s, or leaves `upload.after` s after an interrupt."""
    with drain.track(upload, resumable=resumable):
        try:
            async with asyncio.timeout(lasts):
                await upload.interrupted.wait()
        except TimeoutError:
            return "finished"
        await asyncio.sleep(upload.after)
        return "interrupted"


def test_new_uploads_are_refused_once_draining() -> None:
    async def scenario() -> None:
        drain = Drain(grace=1.0)
        drain.admit()  # not draining: nothing raised
        await drain.run()
        with pytest.raises(ApiError) as caught:
            drain.admit()
        assert caught.value.status == 503
        assert caught.value.code == "shutting_down"
        assert (b"retry-after", b"1") in caught.value.headers

    run(scenario())


def test_streamed_uploads_get_the_grace_resumable_ones_do_not() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        drain = Drain(grace=0.3, settle=2.0)
        quick, slow, resumable = Upload(), Upload(), Upload()
        tasks = [
            asyncio.create_task(_hold(drain, quick, lasts=0.1)),
            asyncio.create_task(_hold(drain, slow)),
            asyncio.create_task(_hold(drain, resumable, resumable=True)),
        ]
        await asyncio.sleep(0.01)
        started = loop.time()
        await drain.run()
        results = await asyncio.gather(*tasks)
        assert results == ["finished", "interrupted", "interrupted"]
        assert resumable.interrupted_at is not None and slow.interrupted_at is not None
        assert resumable.interrupted_at - started < 0.1  # at once
        assert slow.interrupted_at - started >= 0.3  # after the grace
        assert quick.interrupted_at is None
        assert drain.in_flight == 0

    run(scenario())


def test_the_drain_ends_early_when_the_streamed_uploads_are_done() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        drain = Drain(grace=30.0)
        task = asyncio.create_task(_hold(drain, Upload(), lasts=0.1))
        await asyncio.sleep(0.01)
        started = loop.time()
        await drain.run()
        assert loop.time() - started < 5.0
        assert await task == "finished"

    run(scenario())


def test_hurry_skips_the_grace_and_late_uploads_are_interrupted_as_they_start() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        drain = Drain(grace=30.0, settle=2.0)
        slow = Upload()
        task = asyncio.create_task(_hold(drain, slow))
        await asyncio.sleep(0.01)
        started = loop.time()
        running = asyncio.create_task(drain.run())
        await asyncio.sleep(0.05)
        assert slow.interrupted_at is None  # still in its grace
        drain.hurry()
        await running
        assert loop.time() - started < 5.0
        assert await task == "interrupted"
        late = Upload()
        assert await _hold(drain, late) == "interrupted"

    run(scenario())


def test_an_upload_that_does_not_leave_holds_the_drain_no_longer_than_settle() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        drain = Drain(grace=0.05, settle=0.2)
        stuck = Upload(after=30.0)
        task = asyncio.create_task(_hold(drain, stuck))
        await asyncio.sleep(0.01)
        started = loop.time()
        await drain.run()
        assert 0.2 <= loop.time() - started < 5.0
        task.cancel()

    run(scenario())


def test_the_drain_gauge_follows() -> None:
    async def scenario() -> list[bool]:
        seen: list[bool] = []
        await Drain(grace=0.1, on_change=seen.append).run()
        return seen

    assert run(scenario()) == [True]


# -- the request body ------------------------------------------------------------------


def _body(receive: Any) -> RequestBody:
    return RequestBody(receive, content_length=None, limit=1 << 30, idle_timeout=30.0)


def test_a_body_waiting_on_its_client_fails_at_once_with_shutting_down() -> None:
    async def scenario() -> tuple[list[bytes], ApiError]:
        sent = [{"type": "http.request", "body": b"a" * 10, "more_body": True}]

        async def receive() -> dict[str, Any]:
            if sent:
                return sent.pop()
            await asyncio.Event().wait()  # a client that sends nothing more
            raise AssertionError

        body = _body(receive)
        got: list[bytes] = []

        async def read() -> None:
            async for piece in body:
                got.append(piece)

        task = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        body.interrupt()
        with pytest.raises(ApiError) as caught:
            async with asyncio.timeout(5):
                await task
        return got, caught.value

    got, error = run(scenario())
    assert got == [b"a" * 10]
    assert (error.status, error.code) == (503, "shutting_down")


def test_a_busy_body_fails_before_its_next_read() -> None:
    async def scenario() -> tuple[int, ApiError | None]:
        calls = 0

        async def receive() -> dict[str, Any]:
            nonlocal calls
            calls += 1
            return {"type": "http.request", "body": b"x", "more_body": True}

        body = _body(receive)
        try:
            async for _ in body:
                body.interrupt()  # while the piece is being handled
        except ApiError as exc:
            return calls, exc
        return calls, None

    calls, error = run(scenario())
    assert calls == 1
    assert error is not None and error.code == "shutting_down"


def test_a_complete_body_is_not_interrupted() -> None:
    async def scenario() -> list[bytes]:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"all", "more_body": False}

        body = _body(receive)
        got = [piece async for piece in body]
        body.interrupt()
        assert not body.interrupted
        return got

    assert run(scenario()) == [b"all"]
