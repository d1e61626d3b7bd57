"""The Admin Module's keep-alive HTTP transport against an in-process HTTP server on a
unix socket (no network socket): requests as written, answers as parsed, connections
reused, a server's closed connection retried once, no answer a TransportError."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ingester_gateway.admin.transport import KeepAliveTransport, Streams, TransportError
from tests.kit import run

Handler = Callable[[bytes], Awaitable[bytes | None]]  # request head+body -> raw answer


class Server:
    """Reads one request at a time per connection; answers what `handler` returns
    (None: close the connection without an answer)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = await self.handler(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def connect(self) -> Callable[[], Awaitable[Streams]]:
        async def open_unix() -> Streams:
            return await asyncio.open_unix_connection(str(self.path))

        return open_unix


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def scenario(
    tmp_path: Path,
    handler: Handler,
    work: Callable[[KeepAliveTransport, Server], Awaitable[object]],
) -> object:
    async def go() -> object:
        server = Server(tmp_path / "admin.sock", handler)
        unix = await asyncio.start_unix_server(server.serve, path=str(server.path))
        transport = KeepAliveTransport(
            "http://admin:8000/prefix", timeout=1.0, connect=server.connect()
        )
        try:
            return await work(transport, server)
        finally:
            await transport.close()
            unix.close()

    return run(go())


def test_a_request_is_written_as_http_1_1_and_its_answer_read_whole(tmp_path: Path) -> None:
    async def answer(request: bytes) -> bytes:
        return ok(b'{"file_id": "f-1"}')

    async def work(transport: KeepAliveTransport, server: Server) -> object:
        reply = await transport.request(
            "POST", "/api/v1/files", {"Authorization": "Bearer t"}, b'{"a":1}'
        )
        return reply, server.requests

    reply, requests = scenario(tmp_path, answer, work)  # type: ignore[misc]
    assert reply == (201, b'{"file_id": "f-1"}')
    assert requests == [
        b"POST /prefix/api/v1/files HTTP/1.1\r\nHost: admin:8000\r\nAuthorization: Bearer t"
        b'\r\nContent-Length: 7\r\n\r\n{"a":1}'
    ]


def test_connections_are_kept_alive_between_requests(tmp_path: Path) -> None:
    async def answer(request: bytes) -> bytes:
        return ok()

    async def work(transport: KeepAliveTransport, server: Server) -> object:
        for _ in range(5):
            assert (await transport.request("GET", "/x", {}))[0] == 201
        return server.connections

    assert scenario(tmp_path, answer, work) == 1


def test_a_chunked_answer_is_read(tmp_path: Path) -> None:
    async def answer(request: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )

    async def work(transport: KeepAliveTransport, server: Server) -> object:
        return await transport.request("GET", "/x", {})

    assert scenario(tmp_path, answer, work) == (200, b"abcde")


def test_a_connection_the_server_closed_while_idle_is_replaced(tmp_path: Path) -> None:
    """The server answers, then drops the connection (its keep-alive timeout): the next
    request fails on it and is sent again on a new one, transparently."""
    answered = 0

    async def answer(request: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        return ok() if answered % 2 else None  # every second request: the close

    async def work(transport: KeepAliveTransport, server: Server) -> object:
        first = await transport.request("GET", "/x", {})
        second = await transport.request("GET", "/x", {})
        return first[0], second[0], server.connections

    assert scenario(tmp_path, answer, work) == (201, 201, 2)


def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async def answer(request: bytes) -> bytes:
        return ok(extra=b"Connection: close\r\n")

    async def work(transport: KeepAliveTransport, server: Server) -> object:
        for _ in range(3):
            await transport.request("GET", "/x", {})
        return server.connections

    assert scenario(tmp_path, answer, work) == 3


@pytest.mark.parametrize("trouble", ["silence", "garbage"])
def test_no_usable_answer_is_a_transport_error(tmp_path: Path, trouble: str) -> None:
    async def answer(request: bytes) -> bytes | None:
        if trouble == "silence":
            await asyncio.sleep(5)
        return b"SMTP ready\r\n\r\n"

    async def work(transport: KeepAliveTransport, server: Server) -> object:
        with pytest.raises(TransportError):
            await transport.request("GET", "/x", {})
        return True

    assert scenario(tmp_path, answer, work) is True


def test_nobody_listening_is_a_transport_error(tmp_path: Path) -> None:
    async def refused() -> Streams:
        raise ConnectionRefusedError(111, "Connection refused")

    async def go() -> None:
        transport = KeepAliveTransport("http://admin:8000", connect=refused)
        with pytest.raises(TransportError, match="cannot reach"):
            await transport.request("GET", "/x", {})

    run(go())


def test_only_http_urls_are_taken() -> None:
    with pytest.raises(ValueError, match="not an http"):
        KeepAliveTransport("ftp://admin/")
