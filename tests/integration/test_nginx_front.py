"""nginx in front of the gateway (`proxy_request_buffering off`), as in production."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingester_gateway.reference.processes import ServerProcess, nginx
from tests.kit import curl, sha256_hex
from tests.stack import Stack, stream_stored_digests

SIZE = 20 * 2**20


@pytest.fixture(scope="module")
def proxy(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with nginx(tmp_path_factory.mktemp("nginx"), f"127.0.0.1:{stack.gw.port}") as server:
        yield server


def test_chunked_20_mib_upload_through_nginx_round_trips(
    stack: Stack, proxy: ServerProcess, tmp_path: Path
) -> None:
    # Half random, half text: the zstd stream mixes stored and compressed blocks.
    text = b"".join(b"%08d artStore through nginx\n" % i for i in range(SIZE // 2 // 32 + 1))
    data = os.urandom(SIZE // 2) + text[: SIZE - SIZE // 2]
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    request_id = f"nginx-{uuid.uuid4().hex}"
    with source.open("rb") as stdin:
        answer = curl(
            "-T",
            "-",
            "-H",
            f"Authorization: Bearer {stack.keys.token()}",
            "-H",
            f"X-Request-ID: {request_id}",
            # Named explicitly: left to the gateway, data that starts random is stored as is.
            f"{proxy.url}/api/v1/files/big.bin?compression_algorithm=zstd",
            stdin=stdin,
        )
    assert "Transfer-Encoding: chunked" in answer.trace
    assert answer.status == 201, answer.body
    body = answer.json()
    assert answer.headers["x-request-id"] == request_id
    assert answer.headers["x-upload-id"] == body["upload_id"]
    assert body["file_size"] == SIZE
    assert body["compression_algorithm"] == "zstd"
    assert body["stored_size"] < SIZE
    stored_hex, decoded_hex, stored_size, decoded_size = stream_stored_digests(
        stack, body["file_id"], body["compression_algorithm"]
    )
    original_hex = sha256_hex(data)
    assert (decoded_hex, decoded_size) == (original_hex, SIZE)
    assert body["checksum"] == original_hex
    assert (stored_hex, stored_size) == (body["stored_checksum"], body["stored_size"])


def test_unauthorized_through_nginx_is_still_the_json_envelope(
    stack: Stack, proxy: ServerProcess, tmp_path: Path
) -> None:
    before = stack.stored_ids()
    source = tmp_path / "refused.bin"
    source.write_bytes(os.urandom(2 * 2**20))
    with source.open("rb") as stdin:
        answer = curl(
            "-T",
            "-",
            "-H",
            "X-Request-ID: nginx-401",
            f"{proxy.url}/api/v1/files/x.bin",
            stdin=stdin,
        )
    assert answer.status == 401
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    error = answer.json()["error"]
    assert error["request_id"] == "nginx-401"
    assert error["code"]
    assert error["message"]
    assert stack.stored_ids() == before

    answer = curl(
        "-H", "Authorization: Bearer not.a.token", f"{proxy.url}/api/v1/uploads/whatever-id"
    )
    assert answer.status == 401
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()["error"]) == {"code", "message", "request_id"}
