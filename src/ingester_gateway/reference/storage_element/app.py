"""The reference artStore-compatible Storage Element, as one raw ASGI app.

Errors come as `{"detail": ...}` like the Python SE; unlike it, a duplicate `file_id`
is a 409 and a 0-byte file is stored (the gateway must not rely on either).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from starlette.types import Receive, Scope, Send

from ingester_gateway.auth.verify import Principal, TokenVerifier
from ingester_gateway.errors import ApiError
from ingester_gateway.models import WRITABLE_MODES
from ingester_gateway.pipeline.blocks import BlockReader
from ingester_gateway.pipeline.body import ClientDisconnected, RequestBody
from ingester_gateway.pipeline.multipart import MultipartReader, boundary_from
from ingester_gateway.reference.storage_element.heartbeat import (
    REDIS_TIMEOUT,
    NodeHeartbeat,
    Registration,
)
from ingester_gateway.reference.storage_element.store import (
    FileAttributes,
    FileExists,
    FileStore,
    PartialFile,
    StoreFull,
    valid_file_id,
)
from ingester_gateway.registry.redis import NodeAnnouncement, RedisNodeBook
from ingester_gateway.runtime.asgi import send_json
from ingester_gateway.runtime.redis_io import redis_client
from ingester_gateway.upstream.wire import (
    Capacity,
    CapacityReply,
    DeleteReply,
    ElementInfo,
    ErrorReply,
    StoredFile,
)

BLOCK = 1 << 20
_encoder = msgspec.json.Encoder()


class SeError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class StorageElementApp:
    def __init__(
        self,
        store: FileStore,
        verifier: TokenVerifier,
        *,
        element_id: str,
        mode: str,
        priority: int = 100,
        max_upload_bytes: int = 1 << 40,
        registration: Registration | None = None,
        fail_empty_files: bool = False,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.element_id = element_id
        self.mode = mode
        self.priority = priority
        self.max_upload_bytes = max_upload_bytes
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="se-io")
        self.started_at = time.time()
        self.registration = registration
        # Answer a 0-byte file with 500, as the real artStore SE does (a test switch).
        self.fail_empty_files = fail_empty_files
        self._heartbeat: NodeHeartbeat | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except SeError as exc:
            await _json(send, exc.status, ErrorReply(detail=exc.detail))
        except ApiError as exc:
            await _json(send, exc.status, ErrorReply(detail=exc.message))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if (registration := self.registration) is not None:
                    book = RedisNodeBook(redis_client(registration.redis_url, REDIS_TIMEOUT))
                    self._heartbeat = NodeHeartbeat(
                        book, lambda: self._announcement(registration), registration.interval
                    )
                    await self._heartbeat.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._heartbeat is not None:
                    await self._heartbeat.stop()
                self.executor.shutdown(wait=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"].rstrip("/") or "/"
        if path in ("/health/live", "/api/v1/health/live"):
            await _json(send, 200, {"status": "alive"})
        elif path in ("/health/ready", "/api/v1/health/ready"):
            await _json(send, 200, {"status": "ready", "element_id": self.element_id})
        elif path == "/api/v1/info" and method == "GET":
            await _json(send, 200, self._info())
        elif path == "/api/v1/capacity" and method == "GET":
            await _json(send, 200, self._capacity())
        elif path == "/api/v1/files/upload" and method == "POST":
            await self._upload(scope, receive, send)
        elif path.startswith("/api/v1/gc/") and method == "DELETE":
            await self._gc_delete(scope, send, path[len("/api/v1/gc/") :])
        elif path.startswith("/api/v1/files/"):
            rest = path[len("/api/v1/files/") :]
            if rest.endswith("/download") and method == "GET":
                await self._download(scope, send, rest[: -len("/download")])
            elif "/" not in rest and method == "GET":
                await self._metadata(scope, send, rest)
            elif "/" not in rest and method == "DELETE":
                await self._delete(scope, send, rest)
            else:
                raise SeError(404, "Not Found")
        else:
            raise SeError(404, "Not Found")

    async def _auth(self, scope: Scope) -> Principal:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        return await self.verifier.verify_header(header)

    # -- upload ---------------------------------------------------------------

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = await self._auth(scope)
        if self.mode not in WRITABLE_MODES:
            raise SeError(400, f"storage element is in mode '{self.mode}' and accepts no uploads")
        headers = dict(scope["headers"])
        length_header = headers.get(b"content-length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if length is not None and length > self.store.available + 64 * 1024:
            raise SeError(507, "insufficient storage")
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        body = RequestBody(
            receive, content_length=length, limit=self.max_upload_bytes, idle_timeout=120.0
        )
        reader = MultipartReader(body, boundary_from(content_type))
        fields: dict[str, str] = {}
        partial: PartialFile | None = None
        first_byte: list[float] = []  # time.time() of the file part's first byte
        filename = "file"
        file_type = "application/octet-stream"
        loop = asyncio.get_running_loop()
        try:
            while (part := await reader.next_part()) is not None:
                if part.name != "file":
                    fields[part.name] = await reader.read_value()
                    continue
                if partial is not None:
                    raise SeError(400, "only one file part is accepted")
                file_id = fields.get("file_id") or _new_id()
                if not valid_file_id(file_id):
                    raise SeError(400, "invalid file_id")
                if self.store.exists(file_id):
                    raise SeError(409, f"file {file_id} already exists")
                filename = part.filename or filename
                file_type = part.content_type or file_type
                partial = self.store.begin(file_id)
                async for block in BlockReader(_stamp_first(reader.iter_data(), first_byte), BLOCK):
                    await loop.run_in_executor(self.executor, partial.write, block)
            if partial is None:
                raise SeError(400, "no file part")
            if self.fail_empty_files and partial.size == 0:
                raise SeError(500, "Internal server error: empty file cannot be stored")
            attrs = FileAttributes(
                file_id=partial.file_id,
                original_filename=filename,
                content_type=file_type,
                file_size=partial.size,
                checksum=partial.checksum,
                created_at=dt.datetime.now(dt.UTC).isoformat(),
                uploaded_by=principal.sub,
                retention_policy=fields.pop("retention_policy", None),
                description=fields.pop("description", None),
                version=fields.pop("version", None),
                fields={k: v for k, v in fields.items() if k != "file_id"},
                first_byte_at=first_byte[0] if first_byte else None,
                traceparent=_text(headers.get(b"traceparent")),
            )
            await loop.run_in_executor(self.executor, partial.commit, attrs)
        except StoreFull:
            raise SeError(507, "insufficient storage") from None
        except FileExists as exc:
            raise SeError(409, f"file {exc} already exists") from None
        except ClientDisconnected:
            return  # nobody to answer; the partial is removed below
        finally:
            if partial is not None and not partial.committed:
                await loop.run_in_executor(self.executor, partial.abort)
        await _json(
            send,
            201,
            StoredFile(
                file_id=attrs.file_id,
                checksum=attrs.checksum,
                file_size=attrs.file_size,
                original_filename=attrs.original_filename,
                message="File uploaded successfully",
            ),
        )

    # -- read, delete ---------------------------------------------------------

    def _existing(self, file_id: str) -> FileAttributes:
        attrs = self.store.attrs(file_id)
        if attrs is None:
            raise SeError(404, "File not found")
        return attrs

    async def _metadata(self, scope: Scope, send: Send, file_id: str) -> None:
        await self._auth(scope)
        await _json(send, 200, msgspec.to_builtins(self._existing(file_id)))

    async def _download(self, scope: Scope, send: Send, file_id: str) -> None:
        await self._auth(scope)
        attrs = self._existing(file_id)
        loop = asyncio.get_running_loop()
        fd = os.open(self.store.file_path(file_id), os.O_RDONLY)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", attrs.content_type.encode("latin-1", "replace")),
                        (b"content-length", str(attrs.file_size).encode()),
                        (b"x-checksum-sha256", attrs.checksum.encode()),
                    ],
                }
            )
            remaining = attrs.file_size
            while True:
                chunk = await loop.run_in_executor(self.executor, os.read, fd, BLOCK)
                remaining -= len(chunk)
                more = bool(chunk) and remaining > 0
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    break
        finally:
            os.close(fd)

    async def _delete(self, scope: Scope, send: Send, file_id: str) -> None:
        principal = await self._auth(scope)
        if self.mode != "edit":
            raise SeError(400, f"delete is not allowed in mode '{self.mode}'; use gc")
        attrs = self._existing(file_id)
        if attrs.uploaded_by != principal.sub and principal.role != "admin":
            raise SeError(403, "only the uploader or an admin may delete this file")
        self.store.delete(file_id)
        await _json(send, 200, DeleteReply("deleted", file_id))

    async def _gc_delete(self, scope: Scope, send: Send, file_id: str) -> None:
        principal = await self._auth(scope)
        if principal.token_type != "service_account":
            raise SeError(403, "garbage collection needs a service account token")
        if not valid_file_id(file_id):
            raise SeError(400, "invalid file_id")
        deleted = self.store.delete(file_id)
        await _json(send, 200, DeleteReply("deleted" if deleted else "already_deleted", file_id))

    # -- status ---------------------------------------------------------------

    def _info(self) -> ElementInfo:
        return ElementInfo(
            element_id=self.element_id,
            mode=self.mode,
            status="ok",
            priority=self.priority,
            capacity_bytes=self.store.capacity,
            used_bytes=self.store.used,
            file_count=self.store.file_count,
        )

    def _announcement(self, registration: Registration) -> NodeAnnouncement:
        """This SE's record in the gateways' Redis registry, with its capacity right now."""
        return NodeAnnouncement(
            id=self.element_id,
            url=registration.public_url,
            mode=self.mode,
            status="ok",
            priority=self.priority,
            capacity_total=self.store.capacity,
            capacity_used=self.store.used,
            capacity_available=self.store.available,
            heartbeat_at=time.time(),
            ttl=registration.ttl,
        )

    def _capacity(self) -> CapacityReply:
        total = self.store.capacity
        used = self.store.used
        return CapacityReply(
            storage_id=self.element_id,
            mode=self.mode,
            capacity=Capacity(
                total=total,
                used=used,
                available=self.store.available,
                percent_used=round(100.0 * used / total, 2) if total else 100.0,
            ),
            health="healthy",
        )


async def _stamp_first(chunks: AsyncIterator[bytes], stamp: list[float]) -> AsyncIterator[bytes]:
    """`chunks` unchanged; appends time.time() to `stamp` when the first byte arrives."""
    async for chunk in chunks:
        if chunk and not stamp:
            stamp.append(time.time())
        yield chunk


def _text(header: bytes | None) -> str | None:
    return None if header is None else header.decode("latin-1")


def _new_id() -> str:
    return str(uuid.uuid4())


async def _json(send: Send, status: int, payload: Any) -> None:
    await send_json(send, status, _encoder.encode(payload))
