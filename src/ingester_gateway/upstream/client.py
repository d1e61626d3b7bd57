"""aiohttp client for Storage Elements: the streaming upload, deletes, capacity.

One shared `ClientSession` (connection pooling, keep-alive). The upload is one
chunked multipart POST whose body is an async iterator we feed block by block.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable
from typing import Literal

import aiohttp
import msgspec
import yarl

from ingester_gateway.models import StorageUploadReply
from ingester_gateway.registry import NodeRecord

FailureKind = Literal[
    "connect",  # never reached the SE: connection refused, DNS, connect timeout
    "timeout",  # the SE stopped answering mid-request
    "refused",  # mode not writable (400 from the Python SE, 409 from the Go SE)
    "full",  # 507
    "too_large",  # 413
    "unauthorized",  # 401/403: the SE does not accept our credential
    "server",  # 5xx
    "protocol",  # an answer we cannot use
]


class UpstreamError(Exception):
    def __init__(self, kind: FailureKind, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message


class Capacity(msgspec.Struct):
    total: int
    used: int
    available: int
    percent_used: float | None = None


class CapacityReply(msgspec.Struct):
    storage_id: str | None = None
    mode: str | None = None
    capacity: Capacity | None = None
    health: str | None = None


class _Detail(msgspec.Struct):
    detail: object = None
    error: object = None


_reply_decoder = msgspec.json.Decoder(StorageUploadReply)
_capacity_decoder = msgspec.json.Decoder(CapacityReply)
_detail_decoder = msgspec.json.Decoder(_Detail)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")


class MultipartFraming:
    """The bytes around the file part of the upload body; we write them ourselves so the
    file data can be streamed as it is produced."""

    def __init__(self) -> None:
        self.boundary = "ingester-" + secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"

    def field(self, name: str, value: str) -> bytes:
        return (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"'
            f"\r\n\r\n{value}\r\n"
        ).encode()

    def file_header(self, filename: str, content_type: str) -> bytes:
        return (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{_quote(filename)}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()

    def file_end(self) -> bytes:
        return b"\r\n"

    def closing(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()


def describe_error_body(raw: bytes) -> str:
    """One line from an SE error body: `{"detail": ...}` (Python) or `{"error": ...}` (Go)."""
    try:
        body = _detail_decoder.decode(raw)
    except msgspec.DecodeError:
        return raw[:200].decode("utf-8", "replace")
    detail = body.detail if body.detail is not None else body.error
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("code") or detail
    return str(detail)[:300]


def classify_status(status: int, text: str) -> UpstreamError:
    kind: FailureKind
    if status == 507:
        kind = "full"
    elif status == 413:
        kind = "too_large"
    elif status in (400, 409):
        kind = "refused"
    elif status in (401, 403):
        kind = "unauthorized"
    elif status >= 500:
        kind = "server"
    else:
        kind = "protocol"
    return UpstreamError(kind, f"storage element answered {status}: {text}", status)


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
        node: NodeRecord,
        body: bytes | AsyncIterable[bytes],
        content_type: str,
        headers: dict[str, str],
    ) -> StorageUploadReply:
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
                    raise classify_status(resp.status, describe_error_body(raw))
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("connect", f"cannot connect to {node.id}: {exc.os_error}") from None
        except (aiohttp.ServerTimeoutError, TimeoutError):
            raise UpstreamError("timeout", f"{node.id} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("server", f"{node.id} connection failed: {exc}") from None
        try:
            return _reply_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise UpstreamError("protocol", f"{node.id} sent an unusable reply: {exc}") from None

    def _upload_url(self, node: NodeRecord) -> yarl.URL:
        """Parsed once per node URL, not once per upload."""
        url = self._upload_urls.get(node.url)
        if url is None:
            url = self._upload_urls[node.url] = yarl.URL(
                node.url.rstrip("/") + "/api/v1/files/upload"
            )
        return url

    async def delete(self, node: NodeRecord, file_id: str, headers: dict[str, str]) -> bool:
        """Remove a stored file: the gc route (any mode, service accounts), then the
        edit-mode route. True when the file is gone (or never was)."""
        base = node.url.rstrip("/")
        for path in (f"/api/v1/gc/{file_id}", f"/api/v1/files/{file_id}"):
            try:
                async with self._session.delete(
                    base + path, headers=headers, timeout=self._short_timeout
                ) as resp:
                    await resp.read()
                    if resp.status in (200, 202, 204, 404, 410):
                        return True
            except (aiohttp.ClientError, TimeoutError):
                return False
        return False

    async def capacity(self, node: NodeRecord) -> CapacityReply | None:
        try:
            async with self._session.get(
                node.url.rstrip("/") + "/api/v1/capacity", timeout=self._short_timeout
            ) as resp:
                if resp.status != 200:
                    return None
                return _capacity_decoder.decode(await resp.read())
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
            return None
