"""Probes, metrics, the API description and the logs of a running gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DevKeys, Stack, start_stack
from tests.integration.roundtrip import assert_stored

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TEXT = b"observability makes the invisible visible\n" * 5000


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, bytes(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, bytes(exc.read())


def put(stack: Stack, name: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{stack.gw.url}/api/v1/files/{name}", data=data, method="PUT", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def samples(stack: Stack) -> Samples:
    """Every sample of `/metrics`, keyed by name and sorted labels."""
    status, text = get(f"{stack.gw.url}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def sample(values: Samples, name: str, **labels: str) -> float:
    return float(values.get((name, tuple(sorted(labels.items()))), 0.0))


def wait_for_status(url: str, status: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    seen = get(url)[0]
    while seen != status and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = get(url)[0]
    return seen


# -- probes ----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_liveness_and_readiness_answer_200_with_a_storage_element_up(
    stack: Stack, prefix: str
) -> None:
    status, body = get(f"{stack.gw.url}{prefix}/health/live")
    assert status == 200
    assert json.loads(body)["status"] == "alive"
    status, body = get(f"{stack.gw.url}{prefix}/health/ready")
    assert status == 200
    ready = json.loads(body)
    assert ready["status"] == "ready"
    assert ready["writable_nodes_ok"] == 1


def test_readiness_turns_503_when_the_only_storage_element_stops(
    tmp_path: Path, keys: DevKeys
) -> None:
    with contextlib.contextmanager(start_stack)(tmp_path, keys) as own:
        ready_url = f"{own.gw.url}/health/ready"
        assert get(ready_url)[0] == 200
        own.se.stop()
        # Health checks run every second in tests; an answer older than 3 checks is stale.
        assert wait_for_status(ready_url, 503, seconds=8) == 503
        assert json.loads(get(ready_url)[1])["status"] == "not_ready"
        assert get(f"{own.gw.url}/health/live")[0] == 200  # alive, just not ready
        own.se.start()
        assert wait_for_status(ready_url, 200, seconds=8) == 200


# -- metrics ---------------------------------------------------------------------------


def test_metrics_count_a_stored_upload_and_a_refused_one(stack: Stack) -> None:
    node = stack.se.name
    _, exposition = get(f"{stack.gw.url}/metrics")
    declared = {
        line.split()[2] for line in exposition.decode().splitlines() if line.startswith("# TYPE")
    }
    assert {
        "ingester_uploads_total",
        "ingester_bytes_received_total",
        "ingester_upload_duration_seconds",
        "ingester_uploads_in_flight",
        "ingester_compression_ratio",
        "ingester_node_uploads_total",
        "ingester_bytes_sent_total",
        "ingester_node_healthy",
    } <= declared, declared
    before = samples(stack)

    status, body = put(stack, "metrics.txt", TEXT, stack.keys.auth())
    assert status == 201, body
    assert_stored(stack, body, TEXT)
    refused, _ = put(stack, "metrics.txt", b"x", {"Authorization": "Bearer nope"})
    assert refused == 401
    after = samples(stack)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("ingester_uploads_total", outcome="stored", status="201") == 1
    assert moved("ingester_uploads_total", outcome="rejected", status="401") == 1
    assert moved("ingester_bytes_received_total") == len(TEXT)
    assert moved("ingester_upload_duration_seconds_count", outcome="stored") == 1
    assert moved("ingester_upload_duration_seconds_sum", outcome="stored") > 0
    assert moved("ingester_compression_ratio_count", codec="zstd") == 1
    assert moved("ingester_compression_ratio_sum", codec="zstd") == pytest.approx(
        body["compression_ratio"]
    )
    assert moved("ingester_node_uploads_total", node=node, outcome="stored") == 1
    assert moved("ingester_bytes_sent_total", node=node) == body["stored_size"]
    assert sample(after, "ingester_node_healthy", node=node) == 1
    assert sample(after, "ingester_uploads_in_flight") == 0


def test_in_flight_gauge_counts_an_upload_while_it_runs(stack: Stack) -> None:
    async def slow() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield TEXT[:50_000]
            await asyncio.sleep(0.1)

    async def scenario() -> tuple[int, list[float]]:
        seen: list[float] = []
        async with aiohttp.ClientSession() as session:

            async def upload() -> int:
                async with session.put(
                    f"{stack.gw.url}/api/v1/files/slow.txt", data=slow(), headers=stack.keys.auth()
                ) as resp:
                    return resp.status

            task = asyncio.create_task(upload())
            while not task.done():
                seen.append(await asyncio.to_thread(_in_flight, stack))
                await asyncio.sleep(0.05)
            return await task, seen

    status, seen = asyncio.run(scenario())
    assert status == 201
    assert 1 in seen
    assert _in_flight(stack) == 0


def _in_flight(stack: Stack) -> float:
    return sample(samples(stack), "ingester_uploads_in_flight")


# -- API description -------------------------------------------------------------------


def test_openapi_lists_the_public_routes(stack: Stack) -> None:
    status, body = get(f"{stack.gw.url}/openapi.json")
    assert status == 200
    spec = json.loads(body)
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert "post" in paths["/api/v1/files/upload"]
    assert "put" in paths["/api/v1/files/{filename}"]
    assert "get" in paths["/api/v1/uploads/{upload_id}"]
    for route in ("/health/live", "/health/ready", "/metrics"):
        assert "get" in paths[route], route
    result = spec["components"]["schemas"]["UploadResult"]["properties"]
    assert {"file_id", "checksum", "stored_checksum", "compression_algorithm", "upload_id"} <= set(
        result
    )


# -- logs ------------------------------------------------------------------------------


def test_logs_are_json_with_the_request_id_and_never_the_token_or_content(stack: Stack) -> None:
    request_id = f"log-{uuid.uuid4().hex}"
    marker = f"CONTENT-{uuid.uuid4().hex}".encode()
    token = stack.keys.token()
    wrong_key_token = stack.keys.token(sub="mallory") + "x"
    status, body = put(
        stack,
        "logged.txt",
        marker * 1000,
        {"Authorization": f"Bearer {token}", "X-Request-ID": request_id},
    )
    assert status == 201, body
    refused, _ = put(
        stack,
        "logged.txt",
        marker,
        {"Authorization": f"Bearer {wrong_key_token}", "X-Request-ID": f"{request_id}-401"},
    )
    assert refused == 401

    def stored_line_logged() -> bool:
        return request_id in stack.gw.log_path.read_text()

    deadline = time.monotonic() + 5
    while not stored_line_logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = stack.gw.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert any(line["event"] == "upload_stored" for line in mine), mine
    stored = next(line for line in mine if line["event"] == "upload_stored")
    assert stored["file_id"] == body["file_id"]
    assert stored["upload_id"] == body["upload_id"]
    assert all("level" in line and "timestamp" in line for line in lines)
    for secret in (token, wrong_key_token, token.split(".")[2], marker.decode()):
        assert secret not in text
