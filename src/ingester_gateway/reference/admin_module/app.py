"""The reference Admin Module's routes, as one raw ASGI app (like the reference SE).

    GET    /health/live, /health/ready          ready = the registry database is open
    GET    /.well-known/jwks.json               the signing key
    POST   /api/v1/auth/token                   client credentials -> service-account token
    POST   /api/v1/auth/login                   username/password -> admin-user token
    POST   /api/v1/files                        register (service account admin|user) 201
    GET    /api/v1/files?limit=&offset=         a page of records (any valid token)
    GET    /api/v1/files/{file_id}              one record (any valid token)
    PUT    /api/v1/files/{file_id}              update, e.g. finalize (service account admin|user)
    DELETE /api/v1/files/{file_id}              soft delete (service account admin)

Errors are FastAPI's: `{"detail": "..."}`, and 422 `{"detail": [{type, loc, msg, input}]}`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aioredis
from starlette.types import Receive, Scope, Send

from ingester_gateway.observability import get_logger
from ingester_gateway.reference.admin_module.access import DELETE_ROLES, WRITE_ROLES, Access
from ingester_gateway.reference.admin_module.elements import ElementsPublisher, StorageElementSpec
from ingester_gateway.reference.admin_module.events import (
    STREAM,
    EventType,
    FileEventAnnouncer,
)
from ingester_gateway.reference.admin_module.records import FileRecord, registration, updated
from ingester_gateway.reference.admin_module.registry import FileExists, FileRegistry
from ingester_gateway.reference.admin_module.tokens import TokenIssuer, WrongCredentials
from ingester_gateway.reference.admin_module.validation import (
    FieldError,
    HttpError,
    Rule,
    ValidationFailed,
    check_fields,
    decode_object,
    parse_uuid,
    query_int,
    utc_timestamp,
)
from ingester_gateway.runtime.asgi import read_small_body, send_json
from ingester_gateway.runtime.redis_io import redis_client

MAX_BODY = 1 << 20
REDIS_TIMEOUT = 1.0  # seconds one Redis command may take (an announcement retries, see events.py)
FILES = "/api/v1/files"
_DELETE_QUERY = {"deletion_reason": Rule("str", nullable=False, min_length=1, max_length=255)}

_log = get_logger("ingester_gateway.reference.admin_module")
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Announcements:
    """Where registry changes and the SE list go (`--redis-url` and friends)."""

    redis_url: str | None = None
    stream: str = STREAM
    maxlen: int = 10_000
    elements: list[StorageElementSpec] = field(default_factory=list)
    poll_interval: float = 5.0


class AdminModuleApp:
    def __init__(
        self,
        registry: FileRegistry,
        issuer: TokenIssuer,
        access: Access,
        jwks: dict[str, Any],
        announcements: Announcements,
        clock: Callable[[], str] = utc_timestamp,
        max_ttl_days: int = 365,
    ) -> None:
        self.registry = registry
        self.issuer = issuer
        self.access = access
        self.jwks = _encode(jwks)
        self.announcements = announcements
        self.clock = clock
        # An operator's retention policy stricter than artStore's 365 days.
        self.max_ttl_days = max_ttl_days
        self._redis: aioredis.Redis | None = None
        self._events: FileEventAnnouncer | None = None
        self._elements: ElementsPublisher | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HttpError as exc:
            await _json(send, exc.status, {"detail": exc.detail}, exc.headers)
        except ValidationFailed as exc:
            await _json(send, 422, {"detail": exc.errors})
        except Exception:
            _log.exception("admin_request_failed", path=scope["path"], method=scope["method"])
            await _json(send, 500, {"detail": "Internal Server Error"})

    # -- lifespan ------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        await self.registry.open()
        settings = self.announcements
        if settings.redis_url is None:
            _log.info(
                "announcements_disabled",
                reason="no --redis-url: no file events, no storage-elements document",
            )
            return
        self._redis = redis_client(settings.redis_url, REDIS_TIMEOUT)
        self._events = FileEventAnnouncer(self._redis, settings.stream, settings.maxlen)
        if settings.elements:
            ids = await self.registry.element_ids([e.name for e in settings.elements])
            self._elements = ElementsPublisher(
                self._redis,
                settings.elements,
                ids,
                self.clock,
                interval=settings.poll_interval,
            )
            await self._elements.start()
        _log.info(
            "announcements_enabled",
            stream=settings.stream,
            storage_elements=[e.name for e in settings.elements],
        )

    async def _shutdown(self) -> None:
        if self._elements is not None:
            await self._elements.stop()
        if self._redis is not None:
            await self._redis.aclose()
        await self.registry.close()

    # -- routing -------------------------------------------------------------------

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"].rstrip("/") or "/"
        if path in ("/health/live", "/api/v1/health/live"):
            await _json(send, 200, {"status": "alive"})
        elif path in ("/health/ready", "/api/v1/health/ready"):
            if not self.registry.is_open:
                raise HttpError(503, "the registry database is not open")
            await _json(send, 200, {"status": "ready"})
        elif path == "/.well-known/jwks.json":
            _allow(method, "GET")
            await send_json(send, 200, self.jwks)
        elif path == "/api/v1/auth/token":
            _allow(method, "POST")
            await self._token(receive, send, self.issuer.client_credentials)
        elif path == "/api/v1/auth/login":
            _allow(method, "POST")
            await self._token(receive, send, self.issuer.login)
        elif path == FILES:
            _allow(method, "POST", "GET")
            if method == "POST":
                await self._register(scope, receive, send)
            else:
                await self._list(scope, send)
        elif path.startswith(FILES + "/") and "/" not in path[len(FILES) + 1 :]:
            _allow(method, "GET", "PUT", "DELETE")
            raw_id = urllib.parse.unquote(path[len(FILES) + 1 :])
            handler = {"GET": self._get, "PUT": self._update, "DELETE": self._delete}[method]
            await handler(scope, receive, send, raw_id)
        else:
            raise HttpError(404, "Not Found")

    # -- tokens --------------------------------------------------------------------

    async def _token(
        self, receive: Receive, send: Send, issue: Callable[[dict[str, Any]], object]
    ) -> None:
        body = decode_object(await _body(receive))
        try:
            reply = issue(body)
        except WrongCredentials as exc:
            raise HttpError(401, str(exc), [(b"www-authenticate", b"Bearer")]) from None
        await _json(send, 200, reply, [(b"cache-control", b"no-store")])

    # -- file registry -------------------------------------------------------------

    async def _register(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.access.service_account(_authorization(scope), WRITE_ROLES)
        body = decode_object(await _body(receive))
        record = registration(body, self.clock())
        if record.ttl_days is not None and record.ttl_days > self.max_ttl_days:
            raise ValidationFailed(
                [
                    FieldError(
                        "less_than_equal",
                        ["body", "ttl_days"],
                        f"Input should be less than or equal to {self.max_ttl_days}",
                        record.ttl_days,
                    )
                ]
            )
        try:
            await self.registry.register(record)
        except FileExists:
            raise HttpError(400, f"File with ID {record.file_id} already exists") from None
        _log.info("file_registered", file_id=record.file_id, traceparent=_traceparent(scope))
        await self._announce("file:created", record)
        await _json(send, 201, record)

    async def _get(self, scope: Scope, receive: Receive, send: Send, raw_id: str) -> None:
        await self.access.caller(_authorization(scope))
        record = await self.registry.get(parse_uuid(raw_id, ["path", "file_id"]))
        if record is None:
            raise HttpError(404, "File not found")
        await _json(send, 200, record)

    async def _update(self, scope: Scope, receive: Receive, send: Send, raw_id: str) -> None:
        await self.access.service_account(_authorization(scope), WRITE_ROLES)
        file_id = parse_uuid(raw_id, ["path", "file_id"])
        body = decode_object(await _body(receive))
        now = self.clock()
        record = await self.registry.update(file_id, lambda old: updated(old, body, now))
        if record is None:
            raise HttpError(404, "File not found")
        _log.info("file_updated", file_id=record.file_id, traceparent=_traceparent(scope))
        await self._announce("file:updated", record)
        await _json(send, 200, record)

    async def _delete(self, scope: Scope, receive: Receive, send: Send, raw_id: str) -> None:
        await self.access.service_account(_authorization(scope), DELETE_ROLES)
        file_id = parse_uuid(raw_id, ["path", "file_id"])
        query = {"deletion_reason": "manual"} | _query(scope)
        reason = check_fields(query, _DELETE_QUERY, where="query")["deletion_reason"]
        result = await self.registry.delete(file_id, reason, self.clock())
        if result is None:
            raise HttpError(404, "File not found")
        record, deletion, fresh = result
        if fresh:
            await self._announce("file:deleted", record)
        await _json(send, 200, deletion)

    async def _list(self, scope: Scope, send: Send) -> None:
        await self.access.caller(_authorization(scope))
        query = _query(scope)
        limit = query_int(query, "limit", Rule("int", ge=1, le=1000), 50)
        offset = query_int(query, "offset", Rule("int", ge=0), 0)
        await _json(send, 200, await self.registry.page(limit, offset))

    async def _announce(self, event_type: EventType, record: FileRecord) -> None:
        if self._events is not None:
            await self._events.announce(event_type, record, self.clock())


def _allow(method: str, *methods: str) -> None:
    if method not in methods:
        raise HttpError(405, "Method Not Allowed", [(b"allow", ", ".join(methods).encode())])


def _authorization(scope: Scope) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == b"authorization"), None)


def _traceparent(scope: Scope) -> str | None:
    """The caller's W3C trace context, logged with each registry change."""
    raw = next((v for k, v in scope["headers"] if k == b"traceparent"), None)
    return None if raw is None else raw.decode("latin-1")


async def _body(receive: Receive) -> bytes:
    body = await read_small_body(receive, MAX_BODY)
    if body is None:
        raise HttpError(413, f"Request body larger than {MAX_BODY} bytes")
    return body


def _query(scope: Scope) -> dict[str, str]:
    pairs = urllib.parse.parse_qsl(scope["query_string"].decode("latin-1"))
    return dict(pairs)


async def _json(
    send: Send, status: int, payload: object, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_json(send, status, _encode(payload), headers or ())
