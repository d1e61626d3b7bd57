"""The gateway's uvicorn protocol: bodies handed over in the app's batches, batches that
follow the app's block size as it changes, and reading paused once a batch is held."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from ingester_gateway.runtime.http import BATCH, GONE, GatewayHttpProtocol
from tests.kit import run

PIECE = 64 * 1024


class Transport(asyncio.Transport):
    """Enough of a socket transport for the protocol: records writes and pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

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


def _protocol(app: Any) -> tuple[GatewayHttpProtocol, Transport]:
    config = Config(app=app, log_config=None, lifespan="off")
    protocol = GatewayHttpProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = Transport()
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
