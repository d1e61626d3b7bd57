"""A bug in an upload (an exception the gateway did not foresee) is a JSON 500 that
`/metrics` counts as failed, never as stored, and its log line carries where it
happened, not the exception's text (which may quote the request)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from ingester_gateway.app import build_app
from ingester_gateway.config import load_settings
from ingester_gateway.gateway import Gateway
from ingester_gateway.registry import NodeRecord
from ingester_gateway.registry.directory import NodeDirectory
from ingester_gateway.registry.health import HealthProber
from ingester_gateway.registry.static import StaticRegistry
from ingester_gateway.resilience import BreakerPolicy
from ingester_gateway.upload.driver import UploadDriver
from tests.kit import DevKeys, asgi_put

QUOTED_REQUEST = "\u00ffsecret request bytes\u00fe"


async def no_answer(node: NodeRecord) -> None:
    return None


@pytest.fixture
def gateway(keys: DevKeys) -> Iterator[Gateway]:
    settings = load_settings(
        {
            "INGESTER_AUTH_PUBLIC_KEY_FILE": str(keys.public_path),
            "INGESTER_STORAGE_ELEMENTS": json.dumps([{"id": "se-1", "url": "http://se:1"}]),
        }
    )
    gw = Gateway(settings)
    gw.nodes = NodeDirectory(
        StaticRegistry(settings.storage_elements), HealthProber(no_answer), BreakerPolicy()
    )
    gw.uploads = object()  # type: ignore[assignment]  # never reached: the driver is patched
    try:
        yield gw
    finally:
        gw.executor.shutdown()


def test_an_unhandled_error_is_a_500_counted_as_failed_and_logged_without_its_text(
    gateway: Gateway, keys: DevKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bug(self: UploadDriver, source: object) -> None:
        raise RecursionError(f"maximum recursion depth exceeded near {QUOTED_REQUEST}")

    monkeypatch.setattr(UploadDriver, "run", bug)
    app = build_app(gateway.settings, gateway)
    with capture_logs() as logs:
        sent = asgi_put(app, keys.token(), b"abc")

    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"]["code"] == "internal_error"
    metrics = gateway.metrics
    assert metrics.uploads.labels("failed", "500")._value.get() == 1
    assert metrics.uploads.labels("stored", "201")._value.get() == 0
    (line,) = [entry for entry in logs if entry["event"] == "unhandled_error"]
    assert line["error_type"] == "builtins.RecursionError"
    assert any("test_unhandled_error.py" in frame for frame in line["frames"])
    assert QUOTED_REQUEST not in json.dumps(logs, default=str)
