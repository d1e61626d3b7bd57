"""The tus 1.0 requests of `ingester-gateway upload`, over one aiohttp session: each
returns the gateway's answer whatever its status; a connection that fails (refused, cut,
silent too long) is a `TransportError`, which the uploader treats as transient."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import AsyncIterable
from dataclasses import dataclass
from types import TracebackType

import aiohttp

from ingester_gateway.resumable.headers import format_digest
from ingester_gateway.resumable.protocol import OFFSET_STREAM, TUS_VERSION
from ingester_gateway.resumable.protocol import PREFIX as TUS_PATH

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # the answer to a PATCH comes once its bytes are on disk


class TransportError(Exception):
    """The gateway could not be reached, or the connection broke."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class TusTransport:
    def __init__(self, base_url: str, token: str, user_agent: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.collection = self.base_url + TUS_PATH
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Tus-Resumable": TUS_VERSION,
            "User-Agent": user_agent,
        }
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TusTransport:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout, headers=self._headers, auto_decompress=False
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def resolve(self, location: str) -> str:
        """An upload's absolute URL from a `Location` (the gateway sends a path)."""
        return urllib.parse.urljoin(self.collection, location)

    async def _call(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        data: AsyncIterable[bytes] | None = None,
    ) -> Answer:
        assert self._session is not None, "use the transport as an async context manager"
        try:
            async with self._session.request(
                method, url, headers=headers, data=data, allow_redirects=False
            ) as resp:
                body = await resp.read()
                return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(_describe(exc, url)) from None

    async def create(
        self,
        length: int,
        upload_metadata: str | None,
        concat: str | None = None,
        sha256: bytes | None = None,
    ) -> Answer:
        """POST to the collection: a new upload of `length` bytes (a final upload of
        concatenation declares none)."""
        headers: dict[str, str] = {}
        if concat is None or concat == "partial":
            headers["Upload-Length"] = str(length)
        if concat is not None:
            headers["Upload-Concat"] = concat
        if upload_metadata:
            headers["Upload-Metadata"] = upload_metadata
        if sha256 is not None:  # checked by the gateway against the whole file as stored
            headers["Repr-Digest"] = format_digest("sha-256", sha256)
        return await self._call("POST", self.collection, headers)

    async def head(self, url: str) -> Answer:
        return await self._call("HEAD", url)

    async def status(self, url: str) -> Answer:
        """GET on the upload: its state as JSON, the stored file's result once stored."""
        return await self._call("GET", url)

    async def terminate(self, url: str) -> Answer:
        return await self._call("DELETE", url)

    async def patch(
        self, url: str, offset: int, length: int, sha256: bytes, body: AsyncIterable[bytes]
    ) -> Answer:
        """`length` bytes at `offset`, with their checksum: the gateway keeps them whole or
        not at all (460 on a mismatch)."""
        headers = {
            "Content-Type": OFFSET_STREAM,
            "Content-Length": str(length),
            "Upload-Offset": str(offset),
            "Upload-Checksum": f"sha256 {base64.b64encode(sha256).decode()}",
        }
        return await self._call("PATCH", url, headers, body)


def _describe(exc: BaseException, url: str) -> str:
    host = urllib.parse.urlsplit(url).netloc
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        refused = "connection refused" if isinstance(cause, ConnectionRefusedError) else None
        return f"cannot reach {host}: {cause.strerror or refused or cause}"
    if isinstance(exc, TimeoutError):
        return f"{host} did not answer in time"
    return f"the connection to {host} broke: {exc or type(exc).__name__}"
