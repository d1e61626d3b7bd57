"""Uploads through a real gateway into a real reference Storage Element, over loopback.

Every stored object is downloaded from the SE, decoded with the answer's
`compression_algorithm`, and compared with what was sent.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.kit import (
    AS_SENT,
    CODEC_NAMES,
    DevKeys,
    assert_error_envelope,
    curl,
    eventually,
    files_path,
    http_call,
    multipart_body,
    pseudo_random_blocks,
    sha256_hex,
)
from tests.stack import (
    Stack,
    assert_stored,
    paced_put,
    se_metadata,
    start_stack,
    stream_stored_digests,
)

TEXT = b"".join(
    f"{i:06d} the quick brown fox jumps over the lazy dog\n".encode() for i in range(30_000)
)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(4000)
# An error answered after the whole body arrived must not wait for the drain timeout (2 s).
PROMPT_SECONDS = 1.0
MAGIC = {"zstd": b"\x28\xb5\x2f\xfd", "gzip": b"\x1f\x8b"}


def files_url(stack: Stack, name: str, query: str = "") -> str:
    return stack.gw.url + files_path(name, query)


async def sliced(data: bytes, sizes: Iterator[int], pause: float = 0.0) -> AsyncIterator[bytes]:
    at = 0
    while at < len(data):
        size = next(sizes)
        yield data[at : at + size]
        at += size
        if pause:
            await asyncio.sleep(pause)


def cycle(*sizes: int) -> Iterator[int]:
    while True:
        yield from sizes


# -- raw PUT ---------------------------------------------------------------------------


def test_raw_put_with_content_length_roundtrips(stack: Stack) -> None:
    reply = stack.put(TEXT, "text.txt")
    assert reply.status == 201, reply.body
    result = reply.json()
    assert result["original_filename"] == "text.txt"
    assert result["compression_algorithm"] == "zstd"  # the default codec
    assert result["content_type"] == "text/plain"
    assert result["storage_element_id"] == stack.se.name
    assert result["storage_element_url"] == stack.se.url
    assert result["retention_policy"] == "permanent"
    assert result["stored_size"] < result["file_size"] // 3
    assert_stored(stack, result, TEXT)


def test_raw_put_chunked_from_curl_stdin_roundtrips(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "stdin.txt"
    source.write_bytes(TEXT)
    with source.open("rb") as stdin:
        answer = curl(
            "-T",
            "-",
            "-H",
            f"Authorization: Bearer {stack.keys.token()}",
            files_url(stack, "from-stdin.txt", "compression_algorithm=gzip"),
            stdin=stdin,
        )
    assert "Transfer-Encoding: chunked" in answer.trace
    assert answer.status == 201, answer.body
    body = answer.json()
    assert body["compression_algorithm"] == "gzip"
    assert_stored(stack, body, TEXT)


def test_raw_put_chunked_from_async_generator_roundtrips(stack: Stack) -> None:
    data = os.urandom(300_000) + TEXT[:500_000]

    async def upload() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.put(
                files_url(stack, "generated.bin", "compression_algorithm=brotli"),
                data=sliced(data, cycle(1, 65_536, 7, 200_003, 4096)),
                headers=stack.keys.auth(),
            ) as resp,
        ):
            assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
            return resp.status, await resp.json()

    status, body = asyncio.run(upload())
    assert status == 201, body
    assert body["compression_algorithm"] == "brotli"
    assert_stored(stack, body, data)


# -- multipart -------------------------------------------------------------------------


def test_multipart_from_curl_form_roundtrips_with_description(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "report.txt"
    source.write_bytes(TEXT)
    answer = curl(
        "-F",
        "description=x",
        "-F",
        f"file=@{source}",
        "-H",
        f"Authorization: Bearer {stack.keys.token()}",
        f"{stack.gw.url}/api/v1/files/upload",
    )
    assert answer.status == 201, answer.body
    body = answer.json()
    assert body["original_filename"] == "report.txt"
    assert_stored(stack, body, TEXT)
    assert se_metadata(stack, body["file_id"])["description"] == "x"


def test_multipart_from_python_client_roundtrips_with_options(stack: Stack) -> None:
    data = TEXT[:700_000]

    async def upload() -> tuple[int, dict[str, Any]]:
        form = aiohttp.FormData()
        form.add_field("description", "from aiohttp")
        form.add_field("compression_algorithm", "gzip")
        form.add_field("metadata", json.dumps({"project": "artStore"}))
        form.add_field("file", data, filename="notes.txt", content_type="text/plain")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{stack.gw.url}/api/v1/files/upload", data=form, headers=stack.keys.auth()
            ) as resp,
        ):
            return resp.status, await resp.json()

    status, body = asyncio.run(upload())
    assert status == 201, body
    assert body["compression_algorithm"] == "gzip"
    assert body["original_filename"] == "notes.txt"
    assert_stored(stack, body, data)
    assert se_metadata(stack, body["file_id"])["description"] == "from aiohttp"


# -- codecs and sizes ------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_each_codec_stores_decodable_bytes(stack: Stack, codec: str) -> None:
    reply = stack.put(TEXT, f"text-{codec}.txt", query=f"compression_algorithm={codec}")
    assert reply.status == 201, reply.body
    result = reply.json()
    assert result["compression_algorithm"] == codec
    stored = assert_stored(stack, result, TEXT)
    if codec == "none":
        assert result["compression_ratio"] == 1.0
    else:
        assert len(stored) < len(TEXT) // 3
        assert result["compression_ratio"] == pytest.approx(len(TEXT) / len(stored), 1e-3)
        assert result["storage_filename"].endswith(
            {"zstd": ".zst", "brotli": ".br"}.get(codec, ".gz")
        )
    if codec in MAGIC:
        assert stored.startswith(MAGIC[codec])


def test_multipart_each_codec_field_is_honoured(stack: Stack) -> None:
    for codec in CODEC_NAMES:
        reply = stack.post_form(
            *multipart_body(
                [("compression_algorithm", None, codec.encode()), ("file", "t.txt", TEXT[:100_000])]
            )
        )
        assert reply.status == 201, reply.body
        result = reply.json()
        assert result["compression_algorithm"] == codec
        assert_stored(stack, result, TEXT[:100_000])


def test_empty_file_is_stored_raw_and_multipart(stack: Stack) -> None:
    raw = stack.put(b"", "empty.bin")
    form = stack.post_form(*multipart_body([("file", "empty.bin", b"")]))
    for reply in (raw, form):
        assert reply.status == 201, reply.body
        result = reply.json()
        assert result["file_size"] == 0
        assert result["checksum"] == sha256_hex(b"")
        assert_stored(stack, result, b"")


def test_one_byte_file_is_stored(stack: Stack) -> None:
    for codec in CODEC_NAMES:
        reply = stack.put(b"\x07", "one.bin", query=f"compression_algorithm={codec}")
        assert reply.status == 201, reply.body
        result = reply.json()
        assert result["file_size"] == 1
        assert_stored(stack, result, b"\x07")


def test_file_over_64_mib_streams_through(stack: Stack) -> None:
    total = 80 * 2**20
    sent = hashlib.sha256()

    async def generated() -> AsyncIterator[bytes]:
        for block in pseudo_random_blocks(seed=64, total=total, block=3 * 2**20 + 17):
            sent.update(block)
            yield block

    async def upload() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.put(
                files_url(stack, "big.bin"), data=generated(), headers=stack.keys.auth()
            ) as resp,
        ):
            return resp.status, await resp.json()

    status, body = asyncio.run(upload())
    assert status == 201, body
    assert body["file_size"] == total
    assert body["checksum"] == sent.hexdigest()
    stored_hex, decoded_hex, stored_size, decoded_size = stream_stored_digests(
        stack, body["file_id"], body["compression_algorithm"]
    )
    assert (decoded_hex, decoded_size) == (sent.hexdigest(), total)
    assert (stored_hex, stored_size) == (body["stored_checksum"], body["stored_size"])


def test_already_compressed_data_is_stored_as_is(stack: Stack) -> None:
    data = gzip.compress(TEXT)
    reply = stack.put(data, "archive.txt.gz")
    assert reply.status == 201, reply.body
    result = reply.json()
    assert result["compression_algorithm"] == "none"
    assert result["compressed"] is False
    assert result["content_type"] == "application/gzip"
    assert result["stored_checksum"] == result["checksum"]
    assert_stored(stack, result, data)


def test_compress_true_forces_zstd_on_compressed_data(stack: Stack) -> None:
    data = gzip.compress(TEXT)
    reply = stack.put(data, "archive.txt.gz", query="compress=true")
    assert reply.status == 201, reply.body
    result = reply.json()
    assert result["compression_algorithm"] == "zstd"
    assert assert_stored(stack, result, data).startswith(MAGIC["zstd"])


@pytest.mark.parametrize(("mode", "policy"), [("edit", "temporary"), ("rw", "permanent")])
def test_storage_mode_is_an_alias_of_retention_policy(stack: Stack, mode: str, policy: str) -> None:
    raw = stack.put(TEXT[:1000], "aliased.txt", query=f"storage_mode={mode}")
    form = stack.post_form(
        *multipart_body([("storage_mode", None, mode.encode()), ("file", "a.txt", b"abc")])
    )
    for reply, data in ((raw, TEXT[:1000]), (form, b"abc")):
        assert reply.status == 201, reply.body
        result = reply.json()
        assert result["retention_policy"] == policy
        assert_stored(stack, result, data)
        assert se_metadata(stack, result["file_id"])["retention_policy"] == policy


def test_metadata_travels_with_the_file_to_the_se(stack: Stack) -> None:
    metadata = {"project": "artStore", "tags": ["a", "b"], "n": 3}
    encoded = json.dumps(metadata)
    raw = stack.put(b"meta", "meta.txt", query="metadata=" + urllib.parse.quote(encoded))
    form = stack.post_form(
        *multipart_body([("metadata", None, encoded.encode()), ("file", "m.txt", b"meta")])
    )
    for reply, name in ((raw, "meta.txt"), (form, "m.txt")):
        assert reply.status == 201, reply.body
        result = reply.json()
        fields = se_metadata(stack, result["file_id"])["fields"]
        # The SE's own record keeps the client's metadata and what only the gateway
        # knew of the original, as the real Ingester's fields.
        assert json.loads(fields["metadata"]) == {
            "user_metadata": metadata,
            "original_filename": name,
            "original_size": 4,
            "original_sha256": sha256_hex(b"meta"),
            "compression_algorithm": "none",
            "stored_size": 4,
            "stored_sha256": sha256_hex(b"meta"),
        }
        assert fields["uploaded_by_id"] == fields["uploaded_by_username"] == "alice"


# -- refusals that must leave nothing behind -------------------------------------------


def test_control_field_after_file_part_is_refused_promptly_and_nothing_stored(
    stack: Stack,
) -> None:
    before = stack.stored_ids()
    started = time.monotonic()
    reply = stack.post_form(
        *multipart_body([("file", "late.txt", TEXT[:50_000]), ("description", None, b"too late")])
    )
    # The whole body was read: the answer does not wait for more that will never come.
    assert time.monotonic() - started < PROMPT_SECONDS
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["code"] == "field_after_file"
    assert "'description'" in error["message"]
    assert "before 'file'" in error["message"]
    assert stack.stored_ids() == before
    eventually(lambda: not stack.partials(), what="the aborted SE request's partial gone")


def test_content_type_is_judged_from_bytes_not_the_header(stack: Stack) -> None:
    reply = stack.put(PNG, "picture.txt", headers={"Content-Type": "text/plain"})
    assert reply.status == 201, reply.body
    result = reply.json()
    assert result["content_type"] == "image/png"
    assert result["compression_algorithm"] == "none"  # PNG is already compressed
    assert_stored(stack, result, PNG)
    assert se_metadata(stack, result["file_id"])["fields"]["content_type"] == "image/png"


def test_random_bytes_claiming_png_are_recorded_as_octet_stream(stack: Stack) -> None:
    data = os.urandom(5000)
    reply = stack.put(data, "fake.png", headers={"Content-Type": "image/png"})
    assert reply.status == 201, reply.body
    result = reply.json()
    assert result["content_type"] == "application/octet-stream"
    assert_stored(stack, result, data)


@pytest.fixture(scope="module")
def text_only_stack(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    yield from start_stack(
        tmp_path_factory.mktemp("text-only"),
        keys,
        env={"INGESTER_ALLOWED_CONTENT_TYPES": "text/*"},
    )


def test_allow_list_refuses_other_types_with_415_and_stores_nothing(
    text_only_stack: Stack,
) -> None:
    refused_raw = text_only_stack.put(PNG, "p.txt", headers={"Content-Type": "text/plain"})
    started = time.monotonic()
    refused_form = text_only_stack.post_form(*multipart_body([("file", "p.png", PNG)]))
    assert time.monotonic() - started < PROMPT_SECONDS
    for reply in (refused_raw, refused_form):
        assert reply.status == 415, reply.body
        result = reply.json()
        assert "image/png" in result["error"]["message"]
    assert text_only_stack.stored_ids() == []
    eventually(lambda: not text_only_stack.partials(), what="no partial left")
    accepted = text_only_stack.put(TEXT[:5000], "t.txt")
    assert accepted.status == 201, accepted.body
    assert text_only_stack.stored_ids() == [accepted.json()["file_id"]]


# -- names and ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "original", "se_name"),
    [
        ("Résumé naïve été.txt", "Résumé naïve été.txt", "Resume_naive_ete.txt"),
        ("../../etc/passwd", "passwd", "passwd"),  # a name, never a path
        ("zero\u200bwidth.txt", "zerowidth.txt", "zerowidth.txt"),
    ],
)
def test_original_name_is_kept_and_the_se_gets_a_safe_ascii_basename(
    stack: Stack, name: str, original: str, se_name: str
) -> None:
    raw = stack.put(TEXT[:2000], name, query="compress=false")
    form = stack.post_form(
        *multipart_body([("compress", None, b"false"), ("file", name, TEXT[:2000])])
    )
    for reply in (raw, form):
        assert reply.status == 201, reply.body
        result = reply.json()
        assert result["original_filename"] == original
        assert result["storage_filename"] == se_name
        assert_stored(stack, result, TEXT[:2000])
        assert se_metadata(stack, result["file_id"])["original_filename"] == se_name


def test_request_id_is_echoed_and_upload_id_matches_the_body(stack: Stack) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    reply = stack.put(b"ids", "ids.txt", headers={"X-Request-ID": request_id})
    assert reply.status == 201, reply.body
    result = reply.json()
    assert reply.headers["x-request-id"] == request_id
    assert reply.headers["x-upload-id"] == result["upload_id"]
    assert len(result["upload_id"]) >= 8

    refused = stack.put(
        b"ids", "ids.txt", headers={"X-Request-ID": request_id, "Authorization": ""}
    )
    assert refused.status == 401
    assert refused.headers["x-request-id"] == request_id
    assert refused.json()["error"]["request_id"] == request_id


# -- progress --------------------------------------------------------------------------


def progress_url(stack: Stack, upload_id: str) -> str:
    return f"{stack.gw.url}/api/v1/uploads/{upload_id}"


def test_progress_is_visible_while_uploading_and_after(stack: Stack) -> None:
    upload_id = f"progress-{uuid.uuid4().hex}"
    piece = 2**20
    data = os.urandom(6 * piece)

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with aiohttp.ClientSession() as session:

            async def upload() -> dict[str, Any]:
                async with session.put(
                    files_url(stack, "slow.bin", "compress=false"),
                    data=sliced(data, cycle(piece), pause=0.3),
                    headers={**stack.keys.auth(), "X-Upload-Id": upload_id},
                ) as resp:
                    assert resp.status == 201
                    assert resp.headers["X-Upload-Id"] == upload_id
                    return dict(await resp.json())

            task = asyncio.create_task(upload())
            seen: list[dict[str, Any]] = []
            while not task.done():
                async with session.get(
                    progress_url(stack, upload_id), headers=stack.keys.auth()
                ) as resp:
                    if resp.status == 200:
                        seen.append(await resp.json())
                    else:
                        assert resp.status == 404  # not opened yet
                await asyncio.sleep(0.1)
            return await task, seen

    body, seen = asyncio.run(scenario())
    assert body["upload_id"] == upload_id
    running = [p for p in seen if p["state"] in ("receiving", "storing")]
    received = [p["bytes_received"] for p in running]
    assert len(set(received)) >= 3, seen  # it moved while the upload ran
    assert received == sorted(received)
    assert all(p["upload_id"] == upload_id and p["filename"] == "slow.bin" for p in running)

    answer = http_call(stack.gw, "GET", f"/api/v1/uploads/{upload_id}", headers=stack.keys.auth())
    assert answer.status == 200
    done = answer.json()
    assert done["state"] == "stored"
    assert done["file_id"] == body["file_id"]
    assert done["storage_element_id"] == stack.se.name
    assert done["bytes_received"] == len(data)
    assert done["bytes_sent"] == body["stored_size"]
    assert done["error"] is None
    assert done["finished_at"]
    assert_stored(stack, body, data)


def test_progress_is_hidden_from_other_users_and_needs_a_token(stack: Stack) -> None:
    upload_id = f"owned-{uuid.uuid4().hex}"
    reply = stack.put(b"mine", "owned.txt", headers={"X-Upload-Id": upload_id})
    assert reply.status == 201
    assert reply.json()["upload_id"] == upload_id
    path = f"/api/v1/uploads/{upload_id}"
    assert http_call(stack.gw, "GET", path, headers=stack.keys.auth()).status == 200
    other = http_call(stack.gw, "GET", path, headers=stack.keys.auth(sub="bob"))
    assert other.status == 404
    assert other.json()["error"]["code"] == "not_found"
    anonymous = http_call(stack.gw, "GET", path)
    assert anonymous.status == 401
    assert "error" in anonymous.json()
    assert anonymous.headers["www-authenticate"].startswith("Bearer")


def test_an_upload_id_is_its_owners_alone_and_reusable_once_finished(stack: Stack) -> None:
    upload_id = f"scoped-{uuid.uuid4().hex[:12]}"
    during: dict[str, Any] = {}

    def while_alice_uploads(sent: int) -> None:
        if sent == 200_000:  # her upload (and its entry) is running by now
            during["bob"] = stack.put(
                b"bob's own",
                "bob.txt",
                headers={"X-Upload-Id": upload_id},
                auth=stack.keys.auth(sub="bob"),
            )
            during["alice"] = stack.put(b"again", "again.txt", headers={"X-Upload-Id": upload_id})

    alice = paced_put(
        stack.gw,
        files_path("alice.bin", AS_SENT),
        {**stack.keys.auth(), "X-Upload-Id": upload_id},
        b"a" * 500_000,
        chunk=100_000,
        pause=0.2,
        between=while_alice_uploads,
    )
    assert alice.status == 201, alice.body
    # Bob is not told that Alice's id exists, and cannot take it from her.
    assert during["bob"].status == 201, during["bob"].body
    assert during["bob"].json()["upload_id"] == upload_id
    assert_error_envelope(during["alice"], 409, "upload_id_in_use")

    def progress_of(sub: str) -> dict[str, Any]:
        auth = stack.keys.auth(sub=sub)
        answer = http_call(stack.gw, "GET", f"/api/v1/uploads/{upload_id}", headers=auth)
        assert answer.status == 200, answer.body
        return dict(answer.json())

    assert progress_of("alice")["filename"] == "alice.bin"
    assert progress_of("bob")["filename"] == "bob.txt"
    reused = stack.put(b"the next night", "nightly.txt", headers={"X-Upload-Id": upload_id})
    assert reused.status == 201, reused.body
    assert progress_of("alice")["filename"] == "nightly.txt"


def test_failed_upload_shows_failed_with_its_error(stack: Stack) -> None:
    upload_id = f"failing-{uuid.uuid4().hex}"
    before = stack.stored_ids()
    reply = stack.put(
        TEXT[:10_000],
        "wrong-digest.txt",
        headers={"X-Upload-Id": upload_id, "X-Checksum-SHA256": sha256_hex(b"other bytes")},
    )
    assert reply.status == 422, reply.body
    answer = http_call(stack.gw, "GET", f"/api/v1/uploads/{upload_id}", headers=stack.keys.auth())
    assert answer.status == 200
    progress = answer.json()
    assert progress["state"] == "failed"
    assert "sha256" in progress["error"]
    assert progress["finished_at"]
    assert stack.stored_ids() == before
