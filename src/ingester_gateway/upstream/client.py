"""aiohttp client for Storage Elements: the streaming upload, deletes, capacity.

One shared `ClientSession` (connection pooling, keep-alive). The upload is one
multipart POST whose body is either bytes (Content-Length) or an async iterator fed
block by block (chunked).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Literal, Protocol

import aiohttp
import msgspec
import yarl
from aiohttp import http_writer

from ingester_gateway.upstream.wire import (
    CapacityReply,
    StoredFile,
    StoredFileInfo,
    capacity_decoder,
    describe_error,
    stored_file_decoder,
    stored_file_info_decoder,
)

FailureKind = Literal[
    "connect",  # never reached the SE: connection refused, DNS, connect timeout
    "timeout",  # the SE stopped answering mid-request
    "dropped",  # the connection broke mid-request
    "refused",  # mode not writable (400 from the Python SE, 409 from the Go SE)
    "full",  # 507
    "too_large",  # 413
    "unauthorized",  # 401/403: the SE does not accept our credential
    "rejected",  # another 4xx: the SE refuses this request, as any SE would
    "unavailable",  # 503
    "server",  # another 5xx: the node's fault, or this request's (ask its probe)
    "protocol",  # an answer we cannot use
]


# A delete's result: the file is gone (or never was), the SE refused our credential,
# or anything else (no answer, another error).
DeleteOutcome = Literal["deleted", "forbidden", "failed"]


class UpstreamError(Exception):
    def __init__(self, kind: FailureKind, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message


class Endpoint(Protocol):
    """A Storage Element as this client needs it (a registry's node record is one)."""

    @property
    def id(self) -> str: ...

    @property
    def url(self) -> str: ...


def classify_status(status: int, text: str, raw: bytes = b"") -> UpstreamError:
    """The failure an SE's error answer stands for; `text` is its one-line reason."""
    kind: FailureKind
    if status == 507:
        kind = "full"
    elif status == 413:
        kind = "too_large"
    elif status in (400, 409) and ("mode" in text.lower() or b"MODE_NOT_ALLOWED" in raw):
        kind = "refused"  # the Python SE's 400 names the mode; the Go SE's 409 a code
    elif status in (401, 403):
        kind = "unauthorized"
    elif 400 <= status < 500:
        kind = "rejected"
    elif status == 503:
        kind = "unavailable"
    elif status >= 500:
        kind = "server"
    else:
        kind = "protocol"
    return UpstreamError(kind, f"storage element answered {status}: {text}", status)


def use_vectored_writes() -> None:
    """On Python < 3.12.9 aiohttp joins each chunk's size line, data and CRLF into one
    new bytes object before writing (a copy of every byte sent), because asyncio's own
    writelines had CVE-2024-12254 there. uvloop's writelines is its own (a writev of
    the pieces, with flow control, not affected): under uvloop, let aiohttp use it."""
    loop = asyncio.get_running_loop()
    if type(loop).__module__.startswith("uvloop") and hasattr(http_writer, "SKIP_WRITELINES"):
        http_writer.SKIP_WRITELINES = False


class StorageClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        connect_timeout: float = 5.0,
        response_timeout: float = 120.0,
    ) -> None:
        self._session = session
        # sock_read starts once the body is written (aiohttp >= 3.10): it bounds the
        # wait for the SE's verdict, not the length of the upload.
        self._upload_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=response_timeout,
        )
        self._short_timeout = aiohttp.ClientTimeout(
            total=connect_timeout + 5, connect=connect_timeout
        )
        self._upload_urls: dict[str, yarl.URL] = {}

    async def upload(
        self,
        node: Endpoint,
        body: bytes | AsyncIterable[bytes],
        content_type: str,
        headers: dict[str, str],
    ) -> StoredFile:
        url = self._upload_url(node)
        send_headers = {**headers, "Content-Type": content_type}
        try:
            async with self._session.post(
                url,
                data=body,
                headers=send_headers,
                timeout=self._upload_timeout,
                compress=False,  # bytes: Content-Length; a stream: chunked
            ) as resp:
                raw = await resp.read()
                if resp.status not in (200, 201):
                    raise classify_status(resp.status, describe_error(raw), raw)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("connect", f"cannot connect to {node.id}: {exc.os_error}") from None
        except (aiohttp.ServerTimeoutError, TimeoutError):
            raise UpstreamError("timeout", f"{node.id} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("dropped", f"{node.id} connection failed: {exc}") from None
        try:
            return stored_file_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise UpstreamError("protocol", f"{node.id} sent an unusable reply: {exc}") from None

    def _upload_url(self, node: Endpoint) -> yarl.URL:
        """Parsed once per node URL, not once per upload."""
        url = self._upload_urls.get(node.url)
        if url is None:
            url = self._upload_urls[node.url] = yarl.URL(
                node.url.rstrip("/") + "/api/v1/files/upload"
            )
        return url

    async def delete(self, node: Endpoint, file_id: str, headers: dict[str, str]) -> DeleteOutcome:
        """Remove a stored file: the gc route (any mode, service accounts), then the
        edit-mode route; "deleted" when the file is gone (or never was)."""
        base = node.url.rstrip("/")
        refused = 0
        for path in (f"/api/v1/gc/{file_id}", f"/api/v1/files/{file_id}"):
            try:
                async with self._session.delete(
                    base + path, headers=headers, timeout=self._short_timeout
                ) as resp:
                    await resp.read()
                    if resp.status in (200, 202, 204, 404, 410):
                        return "deleted"
                    refused += resp.status in (401, 403)
            except (aiohttp.ClientError, TimeoutError):
                return "failed"
        return "forbidden" if refused else "failed"

    async def file_info(
        self, node: Endpoint, file_id: str, headers: dict[str, str]
    ) -> StoredFileInfo | None:
        """What the SE knows of a file; None when it does not hold it (or cannot say)."""
        try:
            async with self._session.get(
                f"{node.url.rstrip('/')}/api/v1/files/{file_id}",
                headers=headers,
                timeout=self._short_timeout,
            ) as resp:
                if resp.status != 200:
                    return None
                return stored_file_info_decoder.decode(await resp.read())
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
            return None

    async def capacity(self, node: Endpoint) -> CapacityReply | None:
        try:
            async with self._session.get(
                node.url.rstrip("/") + "/api/v1/capacity", timeout=self._short_timeout
            ) as resp:
                if resp.status != 200:
                    return None
                return capacity_decoder.decode(await resp.read())
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
            return None
