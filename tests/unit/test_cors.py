"""CORS around the API, without a server: closed by default, an allow-list of origins,
preflights answered before any route, the resumable-upload headers exposed."""

from __future__ import annotations

from typing import Any

import pytest

from ingester_gateway.api.cors import CorsMiddleware, CorsPolicy
from ingester_gateway.config import ConfigError, load_settings
from tests.kit import run

ORIGIN = "https://app.example"


async def inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": [(b"location", b"/x")]})
    await send({"type": "http.response.body", "body": b""})


def call(policy: CorsPolicy, method: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "path": "/api/v1/tus/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    run(CorsMiddleware(inner, policy)(scope, receive, send))
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


def test_an_allowed_origin_gets_its_preflight_and_the_exposed_headers() -> None:
    policy = CorsPolicy([ORIGIN + "/"])
    status, headers = call(
        policy, "OPTIONS", {"Origin": ORIGIN, "Access-Control-Request-Method": "PATCH"}
    )
    assert status == 204 and headers["access-control-allow-origin"] == ORIGIN
    assert "upload-offset" in headers["access-control-allow-headers"].lower()
    status, headers = call(policy, "POST", {"Origin": ORIGIN})
    assert status == 201 and headers["location"] == "/x"
    exposed = headers["access-control-expose-headers"]
    for name in ("Location", "Upload-Offset", "Upload-Length", "Tus-Resumable", "Upload-Complete"):
        assert name in exposed
    assert headers["vary"] == "Origin"


def test_other_origins_get_no_cors_headers_and_a_refused_preflight() -> None:
    policy = CorsPolicy([ORIGIN])
    status, headers = call(
        policy,
        "OPTIONS",
        {"Origin": "https://other.example", "Access-Control-Request-Method": "POST"},
    )
    assert status == 403 and "access-control-allow-origin" not in headers
    status, headers = call(policy, "POST", {"Origin": "https://other.example"})
    assert status == 201 and "access-control-allow-origin" not in headers
    status, headers = call(policy, "POST", {})
    assert status == 201 and "access-control-allow-origin" not in headers


def test_cors_is_closed_unless_configured_and_origins_are_checked() -> None:
    assert not CorsPolicy([]).enabled and CorsPolicy(["*"]).allows("https://any.example")
    env = {
        "INGESTER_AUTH_JWKS_URL": "http://keys.example/jwks",
        "INGESTER_STORAGE_ELEMENTS": '[{"id": "se", "url": "http://se:1"}]',
    }
    settings = load_settings({**env, "INGESTER_CORS_ORIGINS": f"{ORIGIN}, http://localhost:3000"})
    assert settings.cors_origins == [ORIGIN, "http://localhost:3000"]
    assert settings.tus_dir == ".ingester-state/tus"
    with pytest.raises(ConfigError, match="INGESTER_CORS_ORIGINS"):
        load_settings({**env, "INGESTER_CORS_ORIGINS": "app.example/path"})
