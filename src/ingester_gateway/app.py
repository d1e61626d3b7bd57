"""App factory and routes; wiring only.

Uploads go straight to raw ASGI handlers (the hot path); everything else is a thin
Starlette app, where its conveniences cost nothing that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingester_gateway import errors
from ingester_gateway.api.cors import CorsMiddleware, CorsPolicy
from ingester_gateway.api.finalize import FinalizeRoutes
from ingester_gateway.api.openapi import build_openapi
from ingester_gateway.api.tus import TusEndpoint, is_tus_path
from ingester_gateway.api.uploads import FILES_PREFIX, UploadEndpoint
from ingester_gateway.config import Settings
from ingester_gateway.errors import ApiError, error_body
from ingester_gateway.gateway import Gateway
from ingester_gateway.observability import (
    EdgeMetrics,
    failure_fields,
    get_logger,
    request_id_from,
)
from ingester_gateway.runtime.asgi import send_json
from ingester_gateway.runtime.drain import SignalDrain
from ingester_gateway.runtime.edge import EdgeLimits, Networks
from ingester_gateway.runtime.http import configure_edge
from ingester_gateway.runtime.memory import tune_allocator

_encoder = msgspec.json.Encoder()
_log = get_logger("ingester_gateway.app")


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(payload), status, headers, media_type="application/json")


def _request_id(request: Request) -> str:
    return request_id_from(request.headers.get("x-request-id", "").encode("latin-1") or None)


def _error(request: Request, error: ApiError) -> Response:
    rid = _request_id(request)
    headers = {"x-request-id": rid, **{k.decode(): v.decode() for k, v in error.headers}}
    return Response(error_body(error, rid), error.status, headers, media_type="application/json")


_HTTP_PROBLEMS = {404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED}


def build_app(
    settings: Settings, gateway: Gateway | None = None, drain_on_signals: bool = False
) -> GatewayApp:
    """`drain_on_signals`: SIGTERM/SIGINT drain the uploads before the server stops
    (runtime/drain.py); set when uvicorn runs the app in this process's main thread."""
    gw = gateway or Gateway(settings)
    openapi = _encoder.encode(build_openapi())

    async def live(request: Request) -> Response:
        return _json(200, {"status": "alive"})

    async def ready(request: Request) -> Response:
        ok, details = gw.readiness()
        return _json(200 if ok else 503, {"status": "ready" if ok else "not_ready", **details})

    async def metrics(request: Request) -> Response:
        gw.update_node_metrics()
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(request: Request) -> Response:
        return Response(openapi, media_type="application/json")

    async def upload_progress(request: Request) -> Response:
        principal = await gw.verifier.verify_header(
            request.headers.get("authorization", "").encode("latin-1") or None
        )
        upload_id = request.path_params["upload_id"]
        progress = gw.progress.get(upload_id, principal.sub)
        if progress is None:  # a resumable upload's, if it is one
            progress = await gw.resumable.progress(upload_id, principal.sub)
        if progress is None:
            raise errors.NOT_FOUND("no such upload")
        # Registered since by another gateway's outbox? The registry knows.
        pending = progress.registration == "pending" and progress.file_id is not None
        if pending and await gw.records.is_registered(progress.file_id or ""):
            progress.registration = "registered"
        return _json(200, progress)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        problem = _HTTP_PROBLEMS.get(exc.status_code, errors.BAD_REQUEST)
        headers = [(k.encode(), v.encode()) for k, v in (exc.headers or {}).items()]
        return _error(request, problem(str(exc.detail), headers))

    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette answers with this, then re-raises for GatewayApp._guarded to log.
        return _error(request, errors.INTERNAL_ERROR("internal error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        signals = SignalDrain(gw.drain, asyncio.get_running_loop())
        if drain_on_signals and not signals.install():
            _log.warning("drain_not_installed", reason="not the main thread")
        try:
            yield
        finally:
            signals.uninstall()
            await gw.stop()

    finalize = FinalizeRoutes(gw)
    routes = [
        Route("/api/v1/uploads/{upload_id}", upload_progress, methods=["GET"]),
        Route("/api/v1/finalize/{file_id}", finalize.start, methods=["POST"]),
        Route("/api/v1/finalize/{transaction_id}/status", finalize.status, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    for prefix in ("", "/api/v1"):
        routes.append(Route(f"{prefix}/health/live", live, methods=["GET"]))
        routes.append(Route(f"{prefix}/health/ready", ready, methods=["GET"]))
    starlette = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
    )
    return GatewayApp(gw, starlette, CorsPolicy(settings.cors_origins))


class GatewayApp:
    """The ASGI callable: uploads to raw handlers, the rest to Starlette; CORS around
    everything when origins are allowed."""

    def __init__(self, gateway: Gateway, starlette: Starlette, cors: CorsPolicy) -> None:
        self.gateway = gateway
        self.starlette = starlette
        self.uploads = UploadEndpoint(gateway)
        self.tus = TusEndpoint(gateway)
        self._entry: ASGIApp = CorsMiddleware(self._route, cors) if cors.enabled else self._route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.starlette(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if path.startswith(FILES_PREFIX) and len(path) > len(FILES_PREFIX):
            if method == "POST" and path == "/api/v1/files/upload":
                await self._guarded(self.uploads.post_multipart, scope, receive, send)
            elif method == "PUT":
                await self._guarded(self.uploads.put_file, scope, receive, send)
            else:  # the upload routes exist, for other methods
                allowed = "POST, PUT" if path == "/api/v1/files/upload" else "PUT"
                await self._guarded(_method_not_allowed(allowed), scope, receive, send)
            return
        if is_tus_path(path):
            await self._guarded(self.tus, scope, receive, send)
            return
        await self._guarded(self.starlette, scope, receive, send)

    async def _guarded(self, handler: Any, scope: Scope, receive: Receive, send: Send) -> None:
        """Last line of defence: a bug answers a JSON 500, never a traceback, and is
        logged without the exception's message (it may quote the request)."""
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await handler(scope, receive, tracking_send)
        except Exception as exc:
            _log.error("unhandled_error", method=scope["method"], **failure_fields(exc))
            if not started:
                error = errors.INTERNAL_ERROR("internal error")
                rid = request_id_from(dict(scope["headers"]).get(b"x-request-id"))
                await send_json(
                    send,
                    error.status,
                    error_body(error, rid),
                    [(b"x-request-id", rid.encode()), (b"connection", b"close")],
                )


def _method_not_allowed(allowed: str) -> Any:
    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        error = errors.METHOD_NOT_ALLOWED(f"this route takes {allowed}")
        rid = request_id_from(dict(scope["headers"]).get(b"x-request-id"))
        headers = [(b"x-request-id", rid.encode()), (b"allow", allowed.encode())]
        await send_json(send, error.status, error_body(error, rid), headers)

    return answer


def app_from_environment() -> GatewayApp:
    """uvicorn factory: each worker process builds its app from the environment."""
    from ingester_gateway.config import load_settings
    from ingester_gateway.observability import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    tune_allocator()
    app = build_app(settings, drain_on_signals=True)
    configure_edge(edge_limits(settings), EdgeMetrics(app.gateway.metrics))
    return app


def edge_limits(settings: Settings) -> EdgeLimits:
    return EdgeLimits(
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        max_request_line_bytes=settings.max_request_line_bytes,
        header_timeout=settings.header_timeout_seconds,
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
        # An nginx in front carries many clients on its connections.
        uncapped_peers=Networks(settings.trusted_proxies),
    )
