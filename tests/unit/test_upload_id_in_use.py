"""A refused duplicate X-Upload-Id (the owner's own running upload) must leave that
upload's progress entry alone."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ingester_gateway.api.uploads import UploadEndpoint
from ingester_gateway.config import load_settings
from ingester_gateway.gateway import Gateway
from ingester_gateway.models import UploadProgress
from ingester_gateway.registry import NodeRecord
from ingester_gateway.registry.directory import NodeDirectory
from ingester_gateway.registry.health import HealthProber
from ingester_gateway.registry.static import StaticRegistry
from ingester_gateway.resilience import BreakerPolicy
from ingester_gateway.upload.progress import ProgressBook
from tests.kit import DevKeys, FakeClock, asgi_put


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
    try:
        yield gw
    finally:
        gw.executor.shutdown()


def test_a_duplicate_upload_id_is_409_and_the_running_upload_keeps_its_entry(
    gateway: Gateway, keys: DevKeys
) -> None:
    clock = FakeClock()
    gateway.progress = ProgressBook(retention=10.0, clock=clock)
    gateway.nodes = NodeDirectory(
        StaticRegistry(gateway.settings.storage_elements), HealthProber(no_answer), BreakerPolicy()
    )
    running = UploadProgress(upload_id="upload-0001", state="receiving", filename="a.bin")
    assert gateway.progress.open("upload-0001", "alice", running)

    sent = asgi_put(
        UploadEndpoint(gateway).put_file,
        keys.token(sub="alice"),
        b"abc",
        (b"x-upload-id", b"upload-0001"),
    )

    assert sent[0]["status"] == 409
    assert json.loads(sent[1]["body"])["error"]["code"] == "upload_id_in_use"
    clock.now += 100  # long past the retention of a finished entry
    assert gateway.progress.get("upload-0001", "alice") is running
    assert running.state == "receiving"
