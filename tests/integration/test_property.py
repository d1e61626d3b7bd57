"""Property: any bytes, any chunking of the request body, any codec, either route ->
the Storage Element holds bytes that decode to the original, and both checksums hold.

The gateway runs in-process so that the test decides exactly which pieces `receive()`
hands over (uvicorn would re-chunk them); the Storage Element is a real process.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingester_gateway.app import GatewayApp, build_app
from ingester_gateway.config import load_settings
from ingester_gateway.pipeline.codecs import build_codecs
from ingester_gateway.pipeline.sniff import sniff
from ingester_gateway.reference.processes import ServerProcess, running, se_entry, storage_element
from ingester_gateway.upload.plan import FIRST_BLOCK_BYTES
from tests.kit import CODEC_NAMES, DevKeys, assert_result_matches, multipart_form
from tests.stack import se_get

BLOCK_SIZE = 16 * 1024  # small blocks: a few hundred KiB make many, some past the thread hop
MAX_PAYLOAD = 300 * 1024
ASGI_TIMEOUT = 30.0


@dataclass
class InProcessGateway:
    app: GatewayApp
    loop: asyncio.AbstractEventLoop
    se: ServerProcess
    keys: DevKeys

    def download(self, file_id: str) -> bytes:
        return se_get(self.se, self.keys, f"/api/v1/files/{file_id}/download")


@pytest.fixture(scope="module")
def in_process(
    tmp_path_factory: pytest.TempPathFactory, keys: DevKeys
) -> Iterator[InProcessGateway]:
    workdir = tmp_path_factory.mktemp("property")
    se = storage_element(workdir, keys.public_path)
    with running(se):
        config = load_settings(
            {
                "INGESTER_AUTH_PUBLIC_KEY_FILE": str(keys.public_path),
                "INGESTER_STORAGE_ELEMENTS": json.dumps([se_entry(se)]),
                "INGESTER_BLOCK_SIZE": str(BLOCK_SIZE),
                "INGESTER_STATE_DIR": str(workdir / "state"),
            }
        )
        app = build_app(config)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(app.gateway.start())
        try:
            yield InProcessGateway(app, loop, se, keys)
        finally:
            loop.run_until_complete(app.gateway.stop())
            loop.close()


async def call_asgi(
    app: GatewayApp,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[bytes, bytes]],
    pieces: list[bytes],
) -> tuple[int, bytes]:
    """One request whose body arrives as exactly `pieces`; the status and body sent back."""
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in pieces[:-1]]
    messages.append({"type": "http.request", "body": pieces[-1], "more_body": False})
    queued = iter(messages)
    responded = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        message = next(queued, None)
        if message is not None:
            return message
        await responded.wait()  # like uvicorn: nothing more until the response is out
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            responded.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8020),
    }
    await asyncio.wait_for(app(scope, receive, send), ASGI_TIMEOUT)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), body


def make_payload(kind: str, size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    words = [rng.choice(["artStore", "zstd", "block", "λ", "файл", "\n", " "]) for _ in range(64)]
    text = "".join(rng.choice(words) for _ in range(size // 4 + 1)).encode()[:size]
    return gzip.compress(text) if kind == "gzip" else text


payloads = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        make_payload,
        st.sampled_from(["random", "zeros", "text", "gzip"]),
        st.integers(0, MAX_PAYLOAD),
        st.integers(0, 2**32),
    ),
)


@dataclass
class Upload:
    route: str  # "raw" | "multipart"
    payload: bytes
    codec: str
    force: bool  # compress=true: the codec applies even to already-compressed data
    chunked: bool
    body: bytes
    pieces: list[bytes]
    content_type: str | None


@st.composite
def uploads(draw: st.DrawFn) -> Upload:
    route = draw(st.sampled_from(["raw", "multipart"]))
    payload = draw(payloads)
    codec = draw(st.sampled_from(CODEC_NAMES))
    force = draw(st.booleans())
    options = {"compression_algorithm": codec, **({"compress": "true"} if force else {})}
    if route == "raw":
        body, content_type = payload, None
    else:
        boundary = f"----property{uuid.uuid4().hex}"
        body, content_type = multipart_form(options, payload, "p.bin", boundary)
    # Cuts may repeat or sit at either end: empty pieces are part of any chunking.
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=32)))
    edges = [0, *cuts, len(body)]
    pieces = [body[a:b] for a, b in itertools.pairwise(edges)]
    return Upload(route, payload, codec, force, draw(st.booleans()), body, pieces, content_type)


CODECS = build_codecs()  # the gateway's default levels


def expected_codec(upload: Upload) -> str:
    """The codec asked for, forced or not; left to the gateway, none for data that is
    already compressed, smaller than INGESTER_COMPRESSION_MIN_BYTES (4 KiB), or came
    whole and would not have shrunk."""
    if upload.force or upload.codec == "none":
        return upload.codec
    payload = upload.payload
    if sniff(payload[:8192]).compressed or len(payload) < 4096:
        return "none"
    if len(payload) <= FIRST_BLOCK_BYTES:
        compressor = CODECS[upload.codec].compressor(len(payload))  # type: ignore[index]
        if len(compressor.compress(payload) + compressor.flush()) >= len(payload):
            return "none"
    return upload.codec


@settings(max_examples=60)
@given(upload=uploads())
def test_any_bytes_any_chunking_any_codec_round_trips(
    in_process: InProcessGateway, upload: Upload
) -> None:
    headers = [(b"authorization", f"Bearer {in_process.keys.token()}".encode())]
    if upload.chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    else:
        headers.append((b"content-length", str(len(upload.body)).encode()))
    if upload.route == "raw":
        query = f"compression_algorithm={upload.codec}" + ("&compress=true" if upload.force else "")
        method, path = "PUT", "/api/v1/files/p.bin"
    else:
        assert upload.content_type is not None
        headers.append((b"content-type", upload.content_type.encode()))
        query, method, path = "", "POST", "/api/v1/files/upload"

    status, raw = in_process.loop.run_until_complete(
        call_asgi(in_process.app, method, path, query, headers, upload.pieces)
    )

    assert status == 201, raw
    result = json.loads(raw)
    assert result["compression_algorithm"] == expected_codec(upload)
    assert_result_matches(result, upload.payload, in_process.download(result["file_id"]))
