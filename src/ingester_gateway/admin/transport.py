"""HTTP/1.1 to the Admin Module over a few keep-alive connections, one request at a time
on each, responses parsed by httptools (uvicorn's parser).

Every stored file is one registration, and aiohttp's general client machinery (request
objects, header multidicts, timers, response objects) costs the gateway more CPU than
the request itself: measured on 4 KiB uploads, registering through aiohttp added
~35 % to the gateway's CPU per upload, through this ~15 %. Only what the registry
calls need is here: a method, a path, a few headers, a small body, an answer read
whole. TLS when the URL is https.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import httptools
import yarl

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[[], Awaitable[Streams]]
MAX_ANSWER = 8 * 2**20  # the registry's answers are small; anything bigger is broken


class TransportError(Exception):
    """No answer: the connection failed, or the answer was cut or unreadable."""


class _Answer:
    """httptools callbacks gathering one response."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_headers_complete(self) -> None:
        assert self.parser is not None  # llhttp tells keep-alive here, not after the body
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_ANSWER:
            raise TransportError("the answer is too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class KeepAliveTransport:
    def __init__(
        self,
        base_url: str,
        timeout: float = 5.0,
        max_idle: int = 128,
        connect: Connect | None = None,
    ) -> None:
        url = yarl.URL(base_url)
        if url.host is None or url.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host_header = url.raw_authority.encode()
        self._prefix = url.path.rstrip("/")
        secure = url.scheme == "https"
        host, port = url.host, url.port or (443 if secure else 80)
        context = ssl.create_default_context() if secure else None

        async def open_connection() -> Streams:
            return await asyncio.open_connection(host, port, ssl=context)

        self._connect = connect or open_connection
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: list[Streams] = []

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, bytes]:
        """One request on an idle connection (or a new one); (status, body). A reused
        connection the server had closed is retried once on a fresh one."""
        head = [
            f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode(),
            b"Host: ",
            self._host_header,
        ]
        for name, value in headers.items():
            head.append(f"\r\n{name}: {value}".encode())
        head.append(f"\r\nContent-Length: {len(body or b'')}\r\n\r\n".encode())
        data = b"".join(head) + (body or b"")
        try:
            async with asyncio.timeout(self._timeout):
                while self._idle:
                    streams = self._idle.pop()
                    try:
                        return await self._exchange(streams, data)
                    except (TransportError, OSError):
                        continue  # closed while idle: try another, then a new one
                return await self._exchange(await self._connect(), data)
        except TimeoutError:
            raise TransportError(f"no answer within {self._timeout:g} s") from None
        except OSError as exc:
            raise TransportError(f"cannot reach the Admin Module: {exc}") from None

    async def _exchange(self, streams: Streams, data: bytes) -> tuple[int, bytes]:
        reader, writer = streams
        keep = False
        try:
            writer.write(data)
            answer = _Answer()
            parser = answer.parser = httptools.HttpResponseParser(answer)
            while not answer.complete:
                chunk = await reader.read(65536)
                if not chunk:
                    raise TransportError("the connection closed before the answer")
                try:
                    parser.feed_data(chunk)
                except httptools.HttpParserError as exc:
                    raise TransportError(f"an unreadable answer: {exc}") from None
            keep = answer.keep_alive and len(self._idle) < self._max_idle
            return parser.get_status_code(), b"".join(answer.body)
        finally:
            if keep:
                self._idle.append(streams)
            else:
                writer.close()

    async def close(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
