"""Probes, metrics, the API description and the logs of a running gateway."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.kit import DevKeys, eventually, http_call, scrape
from tests.stack import Stack, assert_stored, own_stack

TEXT = b"observability makes the invisible visible\n" * 5000


# -- probes ----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_liveness_and_readiness_answer_200_with_a_storage_element_up(
    stack: Stack, prefix: str
) -> None:
    live = http_call(stack.gw, "GET", f"{prefix}/health/live")
    assert live.status == 200
    assert live.json()["status"] == "alive"
    answer = http_call(stack.gw, "GET", f"{prefix}/health/ready")
    assert answer.status == 200
    ready = answer.json()
    assert ready["status"] == "ready"
    assert ready["writable_nodes_ok"] == 1


def test_readiness_turns_503_when_the_only_storage_element_stops(
    tmp_path: Path, keys: DevKeys
) -> None:
    with own_stack(tmp_path, keys) as own:

        def readiness() -> int:
            return http_call(own.gw, "GET", "/health/ready").status

        assert readiness() == 200
        own.se.stop()
        # Health checks run every second in tests; an answer older than 3 checks is stale.
        eventually(lambda: readiness() == 503, 8, "not ready without the SE")
        assert http_call(own.gw, "GET", "/health/ready").json()["status"] == "not_ready"
        assert http_call(own.gw, "GET", "/health/live").status == 200  # alive, not ready
        own.se.start()
        eventually(lambda: readiness() == 200, 8, "ready with the SE back")


# -- metrics ---------------------------------------------------------------------------


def test_metrics_count_a_stored_upload_and_a_refused_one(stack: Stack) -> None:
    node = stack.se.name
    before = scrape(stack.gw)
    declared = {line.split()[2] for line in before.text.splitlines() if line.startswith("# TYPE")}
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

    answer = stack.put(TEXT, "metrics.txt")
    assert answer.status == 201, answer.body
    body = answer.json()
    assert_stored(stack, body, TEXT)
    refused = stack.put(b"x", "metrics.txt", auth={"Authorization": "Bearer nope"})
    assert refused.status == 401
    after = scrape(stack.gw)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

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
    assert after.value("ingester_node_healthy", node=node) == 1
    assert after.value("ingester_uploads_in_flight") == 0


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
    return scrape(stack.gw).value("ingester_uploads_in_flight")


# -- API description -------------------------------------------------------------------


def test_openapi_lists_the_public_routes(stack: Stack) -> None:
    answer = http_call(stack.gw, "GET", "/openapi.json")
    assert answer.status == 200
    spec = answer.json()
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
    answer = stack.put(
        marker * 1000,
        "logged.txt",
        headers={"X-Request-ID": request_id},
        auth={"Authorization": f"Bearer {token}"},
    )
    assert answer.status == 201, answer.body
    body = answer.json()
    refused = stack.put(
        marker,
        "logged.txt",
        headers={"X-Request-ID": f"{request_id}-401"},
        auth={"Authorization": f"Bearer {wrong_key_token}"},
    )
    assert refused.status == 401
    eventually(lambda: request_id in stack.gw.log_path.read_text(), what="the upload's log line")
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
