"""A misbehaving Storage Element made out of a real one: a recording, rewriting proxy,
and the rewrites of an SE's answers that the tests use."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from ingester_gateway.reference.processes import free_port
from tests.kit import sha256_hex


@dataclass
class ProxiedRequest:
    method: str
    path: str
    status: int = 0  # 0 until the SE has answered
    body_bytes: int = 0
    reply: bytes = b""  # what the SE answered, before any rewrite
    traceparent: str | None = None  # the W3C trace context the request carried


ReplyRewrite = Callable[[str, str, int, bytes], tuple[int, bytes]]


def se_upload_reply(rewrite: Callable[[int, bytes], tuple[int, bytes]]) -> ReplyRewrite:
    """A proxy rewrite that changes only the SE's 201 to an upload."""

    def rewrite_upload(method: str, path: str, status: int, body: bytes) -> tuple[int, bytes]:
        if method == "POST" and path == "/api/v1/files/upload" and status == 201:
            return rewrite(status, body)
        return status, body

    return rewrite_upload


def wrong_checksum(status: int, body: bytes) -> tuple[int, bytes]:
    """The SE claims a checksum of bytes it did not store."""
    reply = json.loads(body)
    reply["checksum"] = sha256_hex(b"other bytes")
    return status, json.dumps(reply).encode()


def server_error(status: int, body: bytes) -> tuple[int, bytes]:
    """Stored, then a 503: the node failing (a 500 from a node whose health probe is
    fine would be the request's failure, see test_request_failures)."""
    return 503, b'{"detail": "Service Unavailable"}'


class StorageElementProxy:
    """A reverse proxy on loopback in front of a real SE, run by aiohttp in a thread of
    the test process: it records every request it forwards (method, path, status, body
    bytes) and may rewrite the SE's replies, which makes a misbehaving SE out of a real one.

    `rewrite(method, path, status, body) -> (status, body)` may be swapped between tests.
    `refuse(method, path) -> status | None` answers `status` without forwarding (the SE
    never sees the request: a delete refused here leaves the file on the SE), and
    `delay(method, path) -> seconds` holds a request that long before forwarding it.
    `stall_upload(after_bytes, seconds)` makes the SE stop reading an upload body for a
    while, as a stuck disk or a hung SE would; `stalled` is set once it has stopped.
    """

    def __init__(self, upstream: str, name: str = "se-proxy", port: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.name = name
        self.port = port or free_port()
        self.rewrite: ReplyRewrite | None = None
        self.refuse: Callable[[str, str], int | None] | None = None
        self.delay: Callable[[str, str], float] | None = None
        self.requests: list[ProxiedRequest] = []
        self.stalled = threading.Event()
        self._stall: tuple[int, float] | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uploads(self) -> list[ProxiedRequest]:
        """The upload requests that reached the SE through this proxy."""
        with self._lock:
            return [r for r in self.requests if r.path == "/api/v1/files/upload"]

    def stall_upload(self, after_bytes: int, seconds: float) -> None:
        """The next upload stops being read after `after_bytes` for `seconds`."""
        self.stalled.clear()
        self._stall = (after_bytes, seconds)

    def deletes(self) -> list[ProxiedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "DELETE"]

    def start(self) -> StorageElementProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> StorageElementProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        record = ProxiedRequest(
            request.method, request.path, traceparent=request.headers.get("traceparent")
        )
        with self._lock:
            self.requests.append(record)  # on arrival: a request that later fails still counts
        refused = self.refuse(request.method, request.path) if self.refuse else None
        if refused is not None:
            record.status = refused
            return web.json_response({"detail": "refused by the test proxy"}, status=refused)
        if self.delay is not None:
            await asyncio.sleep(self.delay(request.method, request.path))

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_any():
                record.body_bytes += len(chunk)
                yield chunk
                if self._stall is not None and record.body_bytes >= self._stall[0]:
                    seconds, self._stall = self._stall[1], None
                    self.stalled.set()
                    await asyncio.sleep(seconds)  # read nothing: TCP backpressure

        skip = {"host", "content-length", "transfer-encoding", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        has_body = request.body_exists
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body() if has_body else None,
            chunked=True if has_body else None,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as upstream:
            record.reply = payload = await upstream.read()
            record.status = status = upstream.status
            content_type = upstream.headers.get("Content-Type", "application/json")
        if self.rewrite is not None:
            status, payload = self.rewrite(request.method, request.path, status, payload)
        return web.Response(status=status, body=payload, headers={"Content-Type": content_type})
