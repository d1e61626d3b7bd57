"""The two upload endpoints as raw ASGI callables.

Raw ASGI rather than Starlette's Request: the body is pulled with `receive()` piece by
piece (no per-chunk wrappers), and auth runs before the first `receive()`, so a client
that sent `Expect: 100-continue` is refused before it uploads anything.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
from starlette.types import Receive, Scope, Send

from ingester_gateway import errors
from ingester_gateway.api.forwarded import TrustedProxies
from ingester_gateway.auth.verify import Principal
from ingester_gateway.errors import ApiError, error_body
from ingester_gateway.fair_use.ports import UploadSlot
from ingester_gateway.gateway import Gateway
from ingester_gateway.models import iso_utc, parse_upload_options
from ingester_gateway.observability import request_id_from
from ingester_gateway.pipeline.body import ClientDisconnected, RequestBody, drain_body
from ingester_gateway.pipeline.digest import claimed_sha256
from ingester_gateway.pipeline.multipart import MultipartReader, boundary_from
from ingester_gateway.runtime.asgi import query_of, send_json
from ingester_gateway.runtime.http import BATCH, BODY_ERROR, GONE
from ingester_gateway.tracing import Attributes, StepSpan
from ingester_gateway.upload.driver import UploadDriver, new_progress
from ingester_gateway.upload.failover import no_node_error
from ingester_gateway.upload.plan import UploadRequest, check_filename
from ingester_gateway.upload.progress import valid_upload_id
from ingester_gateway.upload.sources import ClientStream

Outcome = Literal["stored", "rejected", "failed", "aborted"]

FILES_PREFIX = "/api/v1/files/"
_ROUTES = {"PUT": FILES_PREFIX + "{filename}", "POST": "/api/v1/files/upload"}
_encoder = msgspec.json.Encoder()
_WANTED = frozenset(
    {
        b"authorization",
        b"content-length",
        b"transfer-encoding",
        b"content-type",
        b"x-request-id",
        b"x-upload-id",
        b"content-digest",
        b"x-checksum-sha256",
        b"expect",
        b"x-forwarded-for",
        b"traceparent",
        b"tracestate",
    }
)


class Exchange:
    """What one upload request carries, read from the ASGI scope once."""

    def __init__(self, scope: Scope) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _WANTED:
                headers[name] = value
        self.headers = headers
        self.scope = scope
        self.request_id = request_id_from(headers.get(b"x-request-id"))
        named = headers.get(b"x-upload-id")
        self.upload_id = _upload_id_from(named)
        self.upload_id_named = named is not None and named.decode("latin-1") == self.upload_id
        self.response_headers = [
            (b"x-request-id", self.request_id.encode()),
            (b"x-upload-id", self.upload_id.encode()),
        ]

    def text(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def content_length(self) -> int | None:
        raw = self.headers.get(b"content-length")
        if raw is None:
            return None
        if not raw.isdigit() or len(raw) > 19:
            raise errors.BAD_REQUEST("invalid Content-Length")
        return int(raw)

    @property
    def chunked(self) -> bool:
        return b"chunked" in self.headers.get(b"transfer-encoding", b"").lower()

    @property
    def expects_continue(self) -> bool:
        return self.headers.get(b"expect", b"").lower() == b"100-continue"


def _upload_id_from(header: bytes | None) -> str:
    """A client may name its upload (to poll progress while it is running)."""
    if header is not None:
        text = header.decode("latin-1")
        if valid_upload_id(text):
            return text
    return uuid.uuid4().hex


class UploadEndpoint:
    """Shared skeleton of both upload routes: auth, options, saga, answer, accounting."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.proxies = TrustedProxies(gateway.settings.trusted_proxies)

    def client_address(self, ex: Exchange) -> str | None:
        client = ex.scope.get("client")
        peer = client[0] if client else None
        return self.proxies.client_address(peer, ex.text(b"x-forwarded-for"))

    async def put_file(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send, self._raw_source)

    async def post_multipart(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send, self._multipart_source)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, source: _SourceFactory
    ) -> None:
        ex = Exchange(scope)
        tracing, headers = self.gw.tracing, ex.headers
        attributes: Attributes | None = None
        if tracing.enabled:
            attributes = {
                "http.request.method": scope["method"],
                "http.route": _ROUTES[scope["method"]],
                "ingester.upload_id": ex.upload_id,
                "ingester.request_id": ex.request_id,
            }
        with tracing.incoming(
            "upload", headers.get(b"traceparent"), headers.get(b"tracestate"), attributes
        ) as span:
            await self._serve(ex, span, receive, send, source)

    async def _serve(
        self, ex: Exchange, span: StepSpan, receive: Receive, send: Send, source: _SourceFactory
    ) -> None:
        gw, scope = self.gw, ex.scope
        started = time.perf_counter()
        body: RequestBody | None = None
        slot: UploadSlot | None = None
        driver: UploadDriver | None = None
        # Counted as a failure unless it is answered otherwise: a bug is a 500, not stored.
        status = 500
        outcome: Outcome = "failed"
        gw.metrics.in_flight.inc()
        gw.budget.started()
        draining = contextlib.ExitStack()  # the upload, known to the drain while it runs
        try:
            gw.drain.admit()
            principal = await gw.verifier.verify_header(ex.headers.get(b"authorization"))
            length = ex.content_length()
            if length is None and not ex.chunked:
                raise errors.LENGTH_REQUIRED("send Content-Length or a chunked body")
            limit = gw.settings.max_upload_bytes
            if length is not None and length > limit:
                raise errors.PAYLOAD_TOO_LARGE(f"upload exceeds the limit of {limit} bytes")
            # Before the first receive() (which sends `100 Continue`): a client that
            # waits for it uploads nothing when no node could take the upload anyway.
            if gw.nodes.select("permanent", length or 0) is None:
                raise no_node_error(
                    gw.nodes.any_usable("permanent"),
                    gw.nodes.could_fit_anywhere("permanent", length or 0),
                    length or 0,
                )
            slot = await gw.fair_use.acquire_upload(principal)  # 429 before any body
            extensions = scope.get("extensions") or {}
            body = RequestBody(
                receive,
                content_length=length,
                limit=limit,
                idle_timeout=gw.settings.client_body_timeout_seconds,
                gone=extensions.get(GONE),
                malformed=extensions[BODY_ERROR]() if BODY_ERROR in extensions else None,
                meter=slot.meter,
            )
            draining.enter_context(gw.drain.track(body))
            if BATCH in extensions:  # the server hands the body over in our blocks
                extensions[BATCH](gw.budget.block_size)
            request, stream = await source(ex, body, principal)
            progress = new_progress(request)
            if not gw.progress.open(
                ex.upload_id, principal.sub, progress, named=ex.upload_id_named
            ):
                # The id is the uploader's own running upload: its entry is not ours to close.
                raise errors.UPLOAD_ID_IN_USE("X-Upload-Id is already in use")
            driver = UploadDriver(gw.uploads, request, progress)
            result = await driver.run(stream)
            if await body.client_gone():
                # Nobody will see the 201: keep no file that no one knows was stored.
                await driver.undo()
                raise ClientDisconnected()
            driver.progress.state = "stored"
            driver.progress.finished_at = iso_utc(time.time())
            # Before the answer: a client that sends its next upload at once has its slot.
            await slot.release()
            await send_json(send, 201, _encoder.encode(result), ex.response_headers)
            status, outcome = 201, "stored"
            gw.metrics.child(gw.metrics.compression_ratio, result.compression_algorithm).observe(
                result.compression_ratio
            )
            gw.metrics.child(gw.metrics.bytes_out, result.storage_element_id).inc(
                result.stored_size
            )
            span.set("ingester.node", result.storage_element_id)
            span.set("ingester.file_id", result.file_id)
            span.set("ingester.file_size", result.file_size)
            span.set("ingester.stored_size", result.stored_size)
            gw.log.info(
                "upload_stored",
                request_id=ex.request_id,
                upload_id=ex.upload_id,
                sub=principal.sub,
                node=result.storage_element_id,
                file_id=result.file_id,
                file_size=result.file_size,
                stored_size=result.stored_size,
                codec=result.compression_algorithm,
                seconds=round(time.perf_counter() - started, 4),
            )
        except ApiError as exc:
            status = exc.status
            outcome = "rejected" if status < 500 else "failed"
            self._mark_failed(driver, exc.message)
            if slot is not None:
                await slot.release()
            await self._answer_error(ex, receive, send, body, exc)
        except ClientDisconnected:
            status, outcome = 499, "aborted"
            self._mark_failed(driver, "client disconnected")
            gw.log.info("upload_aborted", request_id=ex.request_id, upload_id=ex.upload_id)
        except Exception:
            self._mark_failed(driver, "internal error")
            raise  # answered and logged by the app's guard
        finally:
            draining.close()
            if slot is not None:
                await slot.release()  # a no-op when given back before the answer
            gw.metrics.in_flight.dec()
            gw.budget.finished()
            if driver is not None:
                gw.progress.close(ex.upload_id, driver.req.principal.sub)
                node = driver.progress.storage_element_id
                if node is not None:
                    gw.metrics.child(gw.metrics.node_uploads, node, outcome).inc()
            if body is not None:
                gw.metrics.bytes_in.inc(body.bytes_received)
            gw.metrics.child(gw.metrics.uploads, outcome, str(status)).inc()
            gw.metrics.child(gw.metrics.duration, outcome).observe(time.perf_counter() - started)
            span.set("http.response.status_code", status)
            span.set("ingester.outcome", outcome)
            if status >= 500:
                span.fail((driver.progress.error if driver is not None else None) or outcome)

    @staticmethod
    def _mark_failed(driver: UploadDriver | None, message: str) -> None:
        if driver is not None:
            driver.progress.state = "failed"
            driver.progress.error = message
            driver.progress.finished_at = iso_utc(time.time())

    async def _answer_error(
        self, ex: Exchange, receive: Receive, send: Send, body: RequestBody | None, exc: ApiError
    ) -> None:
        headers = [*ex.response_headers, *exc.headers]
        unread = body is None or not body.fully_received
        has_body = ex.chunked or ex.headers.get(b"content-length", b"0") != b"0"
        if unread and has_body:
            # Answer, then close: the rest of the body is not wanted. Read a bounded
            # amount first so the client sees the answer instead of a TCP reset; a
            # client waiting on `100-continue` has sent nothing and is not invited to.
            if (body is not None and body.started) or not ex.expects_continue:
                await drain_body(receive)
            headers.append((b"connection", b"close"))
        self.gw.log.log(
            logging.WARNING if exc.status >= 500 else logging.INFO,
            "upload_failed" if exc.status >= 500 else "upload_rejected",
            request_id=ex.request_id,
            upload_id=ex.upload_id,
            status=exc.status,
            code=exc.code,
            error=exc.message,
        )
        await send_json(send, exc.status, error_body(exc, ex.request_id), headers)

    async def _raw_source(
        self, ex: Exchange, body: RequestBody, principal: Principal
    ) -> tuple[UploadRequest, ClientStream]:
        path: str = ex.scope["path"]
        filename = check_filename(path[len(FILES_PREFIX) :])
        request = UploadRequest(
            upload_id=ex.upload_id,
            request_id=ex.request_id,
            principal=principal,
            filename=filename,
            declared_content_type=ex.text(b"content-type"),
            options=parse_upload_options(query_of(ex.scope)),
            expected_size=body.content_length,
            exact_size=body.content_length,
            claimed_sha256=claimed_sha256(
                ex.text(b"content-digest"), ex.text(b"x-checksum-sha256")
            ),
            client_address=self.client_address(ex),
        )
        return request, ClientStream(body)

    async def _multipart_source(
        self, ex: Exchange, body: RequestBody, principal: Principal
    ) -> tuple[UploadRequest, ClientStream]:
        boundary = boundary_from(ex.text(b"content-type") or "")
        claimed = claimed_sha256(ex.text(b"content-digest"), ex.text(b"x-checksum-sha256"))
        reader = MultipartReader(body, boundary)
        fields: dict[str, str] = {}
        while True:
            part = await reader.next_part()
            if part is None:
                raise errors.MISSING_FILE("the form has no 'file' part")
            if part.name == "file":
                break
            if part.filename is not None:
                raise errors.BAD_REQUEST(
                    f"unexpected file part {errors.quoted(part.name)}; send the file as 'file'"
                )
            fields[part.name] = await reader.read_value()
        request = UploadRequest(
            upload_id=ex.upload_id,
            request_id=ex.request_id,
            principal=principal,
            filename=check_filename(part.filename or fields.get("filename") or "upload.bin"),
            declared_content_type=part.content_type,
            options=parse_upload_options(fields),
            # The request's length bounds the file's; it is what is reserved on the node.
            expected_size=body.content_length,
            claimed_sha256=claimed,
            client_address=self.client_address(ex),
        )

        async def nothing_after_file() -> None:
            trailing = await reader.next_part()
            if trailing is not None:
                raise errors.FIELD_AFTER_FILE(
                    f"field {errors.quoted(trailing.name)} comes after the file part; "
                    "control fields must come before 'file'"
                )

        return request, ClientStream(reader.iter_data(), nothing_after_file)


_SourceFactory = Callable[
    [Exchange, RequestBody, Principal], Awaitable[tuple[UploadRequest, ClientStream]]
]
