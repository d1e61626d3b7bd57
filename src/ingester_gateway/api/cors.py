"""CORS for browser clients (tus-js-client, Uppy): closed unless `INGESTER_CORS_ORIGINS`
names the page's origin. The policy is pure; `CorsMiddleware` only adds its headers to
answers (a preflight is answered here, before any route)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingester_gateway import errors
from ingester_gateway.errors import error_body
from ingester_gateway.observability import request_id_from
from ingester_gateway.runtime.asgi import send_json

Header = tuple[bytes, bytes]

ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = (
    "Authorization, Content-Type, Content-Disposition, Content-Digest, Repr-Digest,"
    " Want-Repr-Digest, X-Request-ID, X-Upload-Id, X-Checksum-SHA256, X-Requested-With,"
    " X-HTTP-Method-Override, Tus-Resumable, Upload-Length, Upload-Offset, Upload-Metadata,"
    " Upload-Defer-Length, Upload-Concat, Upload-Checksum, Upload-Complete,"
    " Upload-Draft-Interop-Version"
)
# What a page's script may read from an answer (beyond the CORS-safelisted few).
EXPOSE_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length,"
    " Upload-Concat, Upload-Expires, Upload-Complete, Upload-Limit, Upload-State,"
    " Upload-File-Id, Upload-Draft-Interop-Version, Tus-Resumable, Tus-Version,"
    " Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, Repr-Digest, X-Request-ID,"
    " X-Upload-Id, Retry-After"
)
MAX_AGE = "86400"


class CorsPolicy:
    def __init__(self, origins: Sequence[str]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(o.rstrip("/") for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self._any or bool(self._origins)

    def allows(self, origin: str) -> bool:
        return self._any or origin in self._origins

    def answer_headers(self, origin: str) -> list[Header]:
        """Added to every answer to an allowed origin."""
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
            (b"vary", b"Origin"),
        ]

    def preflight_headers(self, origin: str) -> list[Header]:
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", MAX_AGE.encode()),
            (b"vary", b"Origin"),
        ]


class CorsMiddleware:
    """Raw ASGI around the whole app; a request without an Origin passes untouched."""

    def __init__(self, app: ASGIApp, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = None
        preflight = False
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"origin":
                    origin = value.decode("latin-1")
                elif name == b"access-control-request-method":
                    preflight = scope["method"] == "OPTIONS"
        if origin is None:
            await self.app(scope, receive, send)
            return
        if not self.policy.allows(origin):
            if preflight:
                error = errors.ORIGIN_NOT_ALLOWED(f"origin {origin!r} is not allowed")
                rid = request_id_from(None)
                rid_header = [(b"x-request-id", rid.encode())]
                await send_json(send, error.status, error_body(error, rid), rid_header)
                return
            await self.app(scope, receive, send)  # no CORS headers: the browser keeps it
            return
        if preflight:
            headers = self.policy.preflight_headers(origin)
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        extra = self.policy.answer_headers(origin)

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_cors)
