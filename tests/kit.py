"""The tests' shared kit: every helper that is not a server.

Driving async code from synchronous tests, a fake clock, dev keys and tokens, an HTTP
client that never raises (`http_call`, `put`, `post_form`, `curl`), the error envelope,
multipart bodies, waiting for a condition, reading a live `/metrics` and a server's JSON
log, checksums and the decoders of the stored bytes.

Every test module takes its helpers from here (or from `tests/stack.py` for anything that
starts servers, `tests/faults.py` for a misbehaving SE), never from a `test_*` module or
from conftest; `tests/unit/test_imports.py` holds that rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import itertools
import json
import random
import socket
import subprocess
import time
import urllib.parse
import uuid
import zlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import brotli
import yarl
import zstandard
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from ingester_gateway.reference.tokens import generate_keypair, mint_token

T = TypeVar("T")
MiB = 2**20
CODEC_NAMES = ("zstd", "brotli", "gzip", "none")  # compression_algorithm values
AS_SENT = "compress=false"  # upload query: the SE stores exactly the bytes sent
# The keys of an artStore file record, in order (BRIEF: file registry, file:created).
RECORD_KEYS = [
    "file_id",
    "original_filename",
    "storage_filename",
    "file_size",
    "checksum_sha256",
    "content_type",
    "description",
    "storage_element_id",
    "storage_path",
    "compressed",
    "compression_algorithm",
    "original_size",
    "uploaded_by",
    "upload_source_ip",
    "created_at",
    "updated_at",
    "retention_policy",
    "ttl_expires_at",
    "ttl_days",
    "user_metadata",
    "tags",
]


# -- async code from synchronous tests ------------------------------------------------------


def run(awaitable: Awaitable[T]) -> T:
    """Run one coroutine on a fresh event loop."""

    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def asgi_put(
    app: Callable[..., Awaitable[None]], token: str, body: bytes, *extra: tuple[bytes, bytes]
) -> list[dict[str, Any]]:
    """One `PUT /api/v1/files/b.bin` with `body` in one piece, straight into an ASGI
    callable (no server); the messages it sent."""
    scope = {
        "type": "http",
        "method": "PUT",
        "path": "/api/v1/files/b.bin",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run(app(scope, receive, send))
    return sent


async def pieces_of(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def collect(source: AsyncIterable[T]) -> list[T]:
    return [item async for item in source]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets (any order, duplicates and out-of-range ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class FakeClock:
    """A clock that moves only when told: `clock()` reads it, `clock.advance(s)` moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def eventually(probe: Callable[[], T | None], timeout: float = 5.0, what: str = "") -> T:
    """The first truthy value of `probe()` within `timeout` seconds; an AssertionError
    naming `what` when there is none."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'the condition'}: not within {timeout:g} s")
        time.sleep(0.05)


# -- keys and tokens -----------------------------------------------------------------------


@dataclass
class DevKeys:
    """An RSA key pair on disk and tokens in the Admin Module's format signed with it."""

    private_pem: bytes
    public_path: Path
    private_path: Path

    @classmethod
    def generate(cls, directory: Path) -> DevKeys:
        private, public = generate_keypair(directory)
        return cls(private.read_bytes(), public, private)

    def token(self, sub: str = "alice", role: str = "user", **kwargs: Any) -> str:
        return mint_token(self.private_pem, sub=sub, role=role, **kwargs)

    def auth(self, sub: str = "alice", role: str = "user", **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, role, **kwargs)}"}


# -- HTTP ----------------------------------------------------------------------------------


class Served(Protocol):
    """Anything with a base URL: a ServerProcess, a proxy."""

    @property
    def url(self) -> str: ...


def base_url(server: str | Served) -> str:
    return server if isinstance(server, str) else server.url


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_call(
    server: str | Served,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One request with http.client: any status comes back as an Answer, never raised.
    An iterable body is sent chunked."""
    host, _, port = base_url(server).removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers=dict(headers or {}), encode_chunked=chunked)
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def raw_exchange(
    server: str | Served,
    data: bytes,
    source: str = "127.0.0.1",
    timeout: float = 30.0,
    until_close: bool = False,
) -> bytes:
    """Send `data` as it is on a new connection (from `source`, a loopback address) and
    read one response (`until_close`: everything until the server closes): for requests
    no client library would send. A server that resets is read as far as it got."""
    host, _, port = base_url(server).removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout, (source, 0)) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(data)
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while (until_close or not _one_response(received)) and (chunk := sock.recv(65536)):
                received += chunk
        return bytes(received)


def _one_response(received: bytearray) -> bool:
    head, found, body = bytes(received).partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response (0 when nothing came)."""
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def files_path(name: str, query: str = "") -> str:
    """The raw-upload route for `name` (quoted: any name, even `../x`, is one segment)."""
    path = f"/api/v1/files/{urllib.parse.quote(name, safe='')}"
    return f"{path}?{query}" if query else path


def put(
    gw: str | Served,
    auth: Mapping[str, str],
    data: bytes | Iterable[bytes],
    name: str = "data.bin",
    query: str = "",
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Answer:
    """`PUT /api/v1/files/{name}?{query}` (the gateway's defaults when `query` is empty;
    `compress=false` stores exactly `data`). An iterable `data` is sent chunked."""
    return http_call(gw, "PUT", files_path(name, query), data, {**auth, **(headers or {})}, timeout)


def post_form(
    gw: str | Served,
    auth: Mapping[str, str],
    body: bytes | Iterable[bytes],
    content_type: str,
    headers: Mapping[str, str] | None = None,
    path: str = "/api/v1/files/upload",
) -> Answer:
    """A multipart upload (to the gateway, or an SE: same route)."""
    fields = {**auth, "Content-Type": content_type, **(headers or {})}
    return http_call(gw, "POST", path, body, fields)


def assert_error_envelope(answer: Answer, status: int, code: str | None = None) -> dict[str, str]:
    """`answer` is the gateway's JSON error envelope with `status` (and `code`)."""
    assert answer.status == status, (answer.status, answer.body[:500])
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.headers
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "request_id"}, error
    assert error["message"] and error["request_id"]
    assert error["request_id"] == answer.headers.get("x-request-id")
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


@dataclass
class CurlAnswer(Answer):
    trace: str  # curl -v on stderr: the request headers it sent, what it was told
    uploaded: int  # body bytes curl sent


def curl(*args: str, stdin: Any = None, timeout: float = 120.0) -> CurlAnswer:
    """Run curl (a real client: `-T` streams chunked from a pipe, `-F` builds forms,
    `Expect: 100-continue`...) with `args`; its answer. A curl error (a reset) raises."""
    argv = ["curl", "-sS", "-v", "-D", "-", "-w", "\n%{size_upload}", *args]
    done = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=timeout, check=True)
    out, _, uploaded = done.stdout.rpartition(b"\n")
    head, _, body = out.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # an interim 100 Continue precedes the answer
        head, _, body = body.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    trace = done.stderr.decode("latin-1")
    return CurlAnswer(int(status_line.split()[1]), headers, body, trace, int(float(uploaded)))


# -- an aiohttp session without a network ------------------------------------------------

Route = Callable[[str, Mapping[str, Any]], Awaitable[tuple[int, bytes]]]


class FakeResponse:
    """What `FakeSession` answers: the parts of aiohttp's ClientResponse the gateway uses."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        self.method, self.url, self.status, self.body = method, url, status, body

    async def read(self) -> bytes:
        return self.body

    async def json(self) -> Any:
        return json.loads(self.body)

    def raise_for_status(self) -> None:
        if self.status >= 400:
            info = aiohttp.RequestInfo(
                yarl.URL(self.url), self.method, CIMultiDictProxy(CIMultiDict())
            )
            raise aiohttp.ClientResponseError(info, (), status=self.status, message="fake")

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeSession:
    """An in-process stand-in for `aiohttp.ClientSession` (unit tests have no socket):
    `routes[(method, url)]` is an async `(url, kwargs) -> (status, body)`; a request to
    any other URL fails as a refused connection would. Every request is recorded.

    (aioresponses would do this with a real ClientSession, but its 0.7.x releases do not
    build responses for aiohttp 3.14: `ClientResponse` wants a `stream_writer` now.)"""

    def __init__(self, routes: Mapping[tuple[str, str], Route] | None = None) -> None:
        self.routes = dict(routes or {})
        self.requests: list[tuple[str, str]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> _Pending:
        return _Pending(self, method.upper(), str(url), kwargs)

    def get(self, url: str, **kwargs: Any) -> _Pending:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> _Pending:
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> _Pending:
        return self.request("DELETE", url, **kwargs)


class _Pending:
    """`session.get(...)`: awaited or used as `async with`, like aiohttp's."""

    def __init__(self, session: FakeSession, method: str, url: str, kwargs: Any) -> None:
        self.session, self.method, self.url, self.kwargs = session, method, url, kwargs

    async def _send(self) -> FakeResponse:
        self.session.requests.append((self.method, self.url))
        route = self.session.routes.get((self.method, self.url))
        if route is None:
            raise aiohttp.ClientConnectionError(f"no route to {self.method} {self.url}")
        status, body = await route(self.url, self.kwargs)
        return FakeResponse(self.method, self.url, status, body)

    def __await__(self) -> Any:
        return self._send().__await__()

    async def __aenter__(self) -> FakeResponse:
        return await self._send()

    async def __aexit__(self, *exc: object) -> None:
        return None


# -- multipart bodies ----------------------------------------------------------------------


def multipart_form(
    fields: Mapping[str, str], data: bytes, filename: str = "data.bin", boundary: str = "b0undary"
) -> tuple[bytes, str]:
    """A multipart/form-data body: control fields, then the `file` part; and its type."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        f"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def multipart_body(
    parts: Iterable[tuple[str, str | None, bytes]], boundary: str | None = None
) -> tuple[bytes, str]:
    """A form built by hand, parts in the given order: (name, filename or None, payload),
    no part headers but the disposition; and its type. A fresh boundary unless given."""
    boundary = boundary or uuid.uuid4().hex
    out = []
    for name, filename, payload in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        out.append(payload + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


# -- what a running server tells -----------------------------------------------------------


class Metrics:
    """One scrape of a Prometheus exposition: samples by name and labels."""

    def __init__(self, exposition: str) -> None:
        self.text = exposition
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(exposition)
            for s in family.samples
        }

    def get(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels; None when it is not there."""
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def value(self, name: str, **labels: str) -> float:
        """The sample, 0 when it is not there (a counter never incremented)."""
        return self.get(name, **labels) or 0.0


def scrape(server: str | Served) -> Metrics:
    """The server's live `/metrics`."""
    answer = http_call(server, "GET", "/metrics", timeout=5)
    assert answer.status == 200, answer.body[:300]
    return Metrics(answer.body.decode())


def metric(server: str | Served, name: str, **labels: str) -> float | None:
    """One sample of the server's live `/metrics`; None when it is not there."""
    return scrape(server).get(name, **labels)


class Logged(Protocol):
    @property
    def log_path(self) -> Path: ...


def log_events(server: Logged, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of `server` (whose event is `event`, when given)."""
    found = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and event in (None, record.get("event")):
                found.append(record)
    return found


# -- bytes: checksums, stored bytes, test data ---------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decompressor(algorithm: str) -> Callable[[bytes], bytes]:
    """An incremental decoder for the stored bytes of `algorithm` (feed b"" to finish)."""
    if algorithm == "zstd":
        obj = zstandard.ZstdDecompressor().decompressobj()
        return lambda chunk: obj.decompress(chunk) if chunk else b""
    if algorithm == "brotli":
        br = brotli.Decompressor()
        return lambda chunk: br.process(chunk) if chunk else b""
    if algorithm == "gzip":
        gz = zlib.decompressobj(31)
        return lambda chunk: gz.decompress(chunk) if chunk else gz.flush()
    if algorithm == "none":
        return lambda chunk: chunk
    raise AssertionError(f"unknown compression_algorithm {algorithm!r}")


def decompress(algorithm: str, stored: bytes) -> bytes:
    step = decompressor(algorithm)
    return step(stored) + step(b"")


def assert_result_matches(result: Mapping[str, Any], original: bytes, stored: bytes) -> None:
    """A 201 answer describes `stored` (what the SE holds), which decodes to `original`."""
    algorithm = result["compression_algorithm"]
    assert decompress(algorithm, stored) == original
    assert result["checksum"] == sha256_hex(original)
    assert result["stored_checksum"] == sha256_hex(stored)
    assert result["file_size"] == len(original)
    assert result["stored_size"] == len(stored)
    assert result["compressed"] is (algorithm != "none")
    if algorithm == "none":
        assert stored == original


def pseudo_random_blocks(seed: int, total: int, block: int = MiB) -> Iterator[bytes]:
    """`total` reproducible random bytes, one block at a time."""
    rng = random.Random(seed)
    left = total
    while left > 0:
        size = min(block, left)
        yield rng.randbytes(size)
        left -= size
