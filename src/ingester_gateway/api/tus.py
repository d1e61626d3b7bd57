"""`/api/v1/tus/`: resumable uploads, tus 1.0 and the IETF draft (interop 8), as raw ASGI.

Raw ASGI for the same reasons as the upload routes: the body is pulled piece by piece
with `receive()`, and everything that can refuse a request (auth, headers, the offset)
is decided before the first `receive()`, so a client waiting for `100 Continue` sends
nothing in vain. The rules are in `resumable/protocol.py`; the work in
`resumable/service.py`; this module reads the request and writes the answer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

import msgspec
from starlette.types import Receive, Scope, Send

from ingester_gateway import errors
from ingester_gateway.api.forwarded import PublicRoot, TrustedProxies
from ingester_gateway.auth.verify import Principal
from ingester_gateway.errors import ApiError, error_body
from ingester_gateway.fair_use.ports import UploadSlot
from ingester_gateway.gateway import Gateway
from ingester_gateway.observability import request_id_from
from ingester_gateway.pipeline.body import ClientDisconnected, RequestBody, drain_body
from ingester_gateway.resumable import protocol
from ingester_gateway.resumable.appender import Appended
from ingester_gateway.resumable.headers import tus_integer
from ingester_gateway.resumable.ports import StateUnavailable
from ingester_gateway.resumable.protocol import PREFIX, Header
from ingester_gateway.resumable.service import ResumableUploads
from ingester_gateway.resumable.state import Dialect, UploadState, status_of
from ingester_gateway.runtime.asgi import query_of, send_json
from ingester_gateway.runtime.http import BATCH, GONE, TRAILERS
from ingester_gateway.upload.progress import valid_upload_id

COLLECTION = PREFIX.rstrip("/")
COLLECTION_METHODS = "OPTIONS, POST"
UPLOAD_METHODS = "OPTIONS, HEAD, GET, PATCH, DELETE"
_encoder = msgspec.json.Encoder()


def is_tus_path(path: str) -> bool:
    return path == COLLECTION or path.startswith(PREFIX)


class _Exchange:
    """One request: its headers (lower-case names, text), dialect and answer headers."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.headers: dict[str, str] = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        self.request_id = request_id_from(scope_header(scope, b"x-request-id"))
        self.method = protocol.method_of(scope["method"], self.headers)
        self.dialect: Dialect = protocol.dialect_of(self.headers)
        path: str = scope["path"]
        self.upload_id = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        self.body: RequestBody | None = None
        # A request that brings data: its fair-use slot, and the drain's hold on it.
        self.slot: UploadSlot | None = None
        self.draining = contextlib.ExitStack()
        self.root = PublicRoot()  # where the client reached us (set once the peer is judged)

    def answer_headers(self) -> list[Header]:
        return [(b"x-request-id", self.request_id.encode()), *protocol.common(self.dialect)]

    def has_body(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower() or (
            self.headers.get("content-length", "0").strip() not in ("", "0")
        )

    def trailers(self) -> Mapping[str, str]:
        read = (self.scope.get("extensions") or {}).get(TRAILERS)
        pairs = read() if read is not None else []
        return {name.decode("latin-1"): value.decode("latin-1") for name, value in pairs}


def _unique(headers: list[Header]) -> list[Header]:
    """Each field once (the first of a name wins)."""
    seen: set[bytes] = set()
    unique = []
    for name, value in headers:
        if name not in seen:
            seen.add(name)
            unique.append((name, value))
    return unique


def scope_header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class TusEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.proxies = TrustedProxies(gateway.settings.trusted_proxies)

    @property
    def _uploads(self) -> ResumableUploads:
        return self.gw.resumable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = _Exchange(scope)
        ex.root = self._public_root(ex)
        reading = False
        try:
            if ex.method == "OPTIONS":
                await self._send(send, 204, [*ex.answer_headers(), *self._discovery()])
                return
            # A method neither protocol knows is 405 whatever the version headers say.
            allowed = UPLOAD_METHODS if ex.upload_id else COLLECTION_METHODS
            if ex.method not in allowed.split(", "):
                raise errors.METHOD_NOT_ALLOWED(
                    f"this route takes {allowed}", [(b"allow", allowed.encode())]
                )
            protocol.check_version(ex.method, ex.dialect, ex.headers)
            principal = await self.gw.verifier.verify_header(scope_header(scope, b"authorization"))
            if not ex.upload_id:
                reading = True
                self.gw.budget.started()
                await self._admit(ex, principal)
                await self._create(ex, principal, receive, send)
                return
            if not valid_upload_id(ex.upload_id):
                raise errors.NOT_FOUND("no such upload")
            if ex.method == "PATCH":
                reading = True
                self.gw.budget.started()
                await self._admit(ex, principal)
                await self._append(ex, principal, receive, send)
            elif ex.method in ("HEAD", "GET"):
                await self._read(ex, principal, send)
            else:  # DELETE
                await self._uploads.terminate(principal, ex.upload_id)
                await self._send(send, 204, ex.answer_headers())
        except StateUnavailable as exc:
            error = errors.UPLOAD_STATE_UNAVAILABLE(f"the upload state is unreachable: {exc}")
            await self._error(ex, receive, send, error)
        except ApiError as exc:
            await self._error(ex, receive, send, exc)
        except ClientDisconnected:
            pass  # what arrived was kept; there is no one to answer
        finally:
            ex.draining.close()
            if ex.slot is not None:
                await ex.slot.release()
            if reading:
                self.gw.budget.finished()
                if ex.body is not None:
                    self.gw.metrics.bytes_in.inc(ex.body.bytes_received)

    def _discovery(self) -> list[Header]:
        return protocol.discovery(self.gw.settings.max_upload_bytes)

    async def _admit(self, ex: _Exchange, principal: Principal) -> None:
        """A request that may bring data: refused while the gateway drains (503), and
        counted by fair use like any upload (429), before anything is read."""
        self.gw.drain.admit()
        ex.slot = await self.gw.fair_use.acquire_upload(principal)

    def _body(self, ex: _Exchange, receive: Receive) -> RequestBody:
        extensions = ex.scope.get("extensions") or {}
        length = tus_integer(ex.headers.get("content-length"), "Content-Length")
        ex.body = RequestBody(
            receive,
            content_length=length,
            limit=self.gw.settings.max_upload_bytes,
            idle_timeout=self.gw.settings.client_body_timeout_seconds,
            gone=extensions.get(GONE),
            meter=ex.slot.meter if ex.slot is not None else None,
        )
        # On SIGTERM a resumable body is interrupted at once: what arrived is kept and
        # the client is answered 503 with the offset, to resume on another instance.
        ex.draining.enter_context(self.gw.drain.track(ex.body, resumable=True))
        if BATCH in extensions:  # the server hands the body over in our blocks
            extensions[BATCH](self.gw.budget.block_size)
        return ex.body

    def _public_root(self, ex: _Exchange) -> PublicRoot:
        client = ex.scope.get("client")
        return self.proxies.public_root(
            client[0] if client else None,
            ex.scope.get("scheme", "http"),
            ex.headers.get("x-forwarded-host"),
            ex.headers.get("x-forwarded-proto"),
            ex.headers.get("x-forwarded-prefix"),
        )

    def _client_address(self, scope: Scope) -> str | None:
        client = scope.get("client")
        forwarded = scope_header(scope, b"x-forwarded-for")
        return self.proxies.client_address(
            client[0] if client else None, forwarded.decode("latin-1") if forwarded else None
        )

    async def _create(
        self, ex: _Exchange, principal: Principal, receive: Receive, send: Send
    ) -> None:
        limit = self.gw.settings.max_upload_bytes
        query = query_of(ex.scope)
        creation = protocol.creation_of(ex.dialect, ex.headers, query, limit, ex.root.prefix)
        state = await self._uploads.create(
            principal, ex.dialect, creation, self._client_address(ex.scope)
        )
        outcome = None
        if creation.body or (creation.complete and state.receiving):
            outcome = await self._uploads.created_with_data(
                state, creation.data(), self._body(ex, receive), ex.trailers
            )
        elif ex.has_body():  # data not declared as such: not read (tus), answered anyway
            await drain_body(receive)
        if await self._gone(ex, outcome):
            return
        headers = [*ex.answer_headers(), *self._answer(ex, state, created=True)]
        if ex.dialect == "ietf" and not state.receiving:
            await send_json(send, 202, _encoder.encode(status_of(state)), headers)
            return
        await self._send(send, 201, headers)

    async def _append(
        self, ex: _Exchange, principal: Principal, receive: Receive, send: Send
    ) -> None:
        spec = protocol.append_of(ex.dialect, ex.headers)
        state, outcome = await self._uploads.append(
            principal, ex.upload_id, spec, self._body(ex, receive), ex.trailers
        )
        answer = self._answer(ex, state, created=False)
        error = outcome.error if outcome is not None else None
        if error is not None and error.problem is errors.SHUTTING_DOWN:  # say where to go on
            await self._error(ex, receive, send, error, answer)
            return
        if await self._gone(ex, outcome):
            return
        if outcome is not None and outcome.ending == "interrupted":
            taken = errors.UPLOAD_INTERRUPTED(
                f"another request took the upload over; {state.offset} bytes are kept"
            )
            await self._error(ex, receive, send, taken, answer)
            return
        headers = [*ex.answer_headers(), *answer]
        if ex.dialect == "ietf" and not state.receiving:
            await send_json(send, 202, _encoder.encode(status_of(state)), headers)
            return
        await self._send(send, 204, headers)

    async def _gone(self, ex: _Exchange, outcome: Appended | None) -> bool:
        """A cut request: what arrived is kept; answer only a slow client (408)."""
        if outcome is None or outcome.ending != "cut":
            return False
        if outcome.error is not None:
            raise outcome.error
        return True

    def _answer(self, ex: _Exchange, state: UploadState, created: bool) -> list[Header]:
        now, limit = self.gw.clock(), self.gw.settings.max_upload_bytes
        if created:
            return protocol.created_headers(ex.dialect, state, now, limit, ex.root.base)
        return protocol.append_headers(ex.dialect, state, now, limit)

    async def _read(self, ex: _Exchange, principal: Principal, send: Send) -> None:
        state = await self._uploads.read(principal, ex.upload_id)
        now, limit = self.gw.clock(), self.gw.settings.max_upload_bytes
        headers = [(b"x-request-id", ex.request_id.encode())]
        headers += protocol.state_headers(ex.dialect, state, now, limit, ex.root.base)
        if ex.method == "GET":
            await send_json(send, 200, _encoder.encode(status_of(state)), headers)
            return
        await self._send(send, 204 if ex.dialect == "ietf" else 200, headers)

    @staticmethod
    async def _send(send: Send, status: int, headers: list[Header]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _error(
        self,
        ex: _Exchange,
        receive: Receive,
        send: Send,
        exc: ApiError,
        extra: list[Header] | None = None,
    ) -> None:
        if ex.dialect == "ietf" and exc.problem is errors.UPLOAD_CHECKSUM_MISMATCH:
            exc = errors.DIGEST_MISMATCH(exc.message)  # 460 is tus's; RFC 9530 names none
        headers = _unique([*ex.answer_headers(), *exc.headers, *(extra or [])])
        if ex.dialect == "ietf" and exc.status == 409:
            headers.append((b"upload-complete", b"?0"))
        body = ex.body
        if ex.has_body() and (body is None or not body.fully_received):
            # Answer, then close: the rest of the body is not wanted (read a bounded
            # amount first, so the client sees the answer rather than a reset).
            expects = ex.headers.get("expect", "").lower() == "100-continue"
            if (body is not None and body.started) or not expects:
                await drain_body(receive)
            headers.append((b"connection", b"close"))
        self.gw.log.log(
            logging.WARNING if exc.status >= 500 else logging.INFO,
            "resumable_rejected",
            request_id=ex.request_id,
            upload_id=ex.upload_id or None,
            method=ex.method,
            status=exc.status,
            code=exc.code,
            error=exc.message,
        )
        await send_json(send, exc.status, error_body(exc, ex.request_id), headers)
