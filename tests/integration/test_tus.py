"""tus 1.0 at /api/v1/tus/ on real processes: tuspy (a real client) with and without a
cut connection, every extension the endpoint advertises, the errors the protocol
names (412, 460, 409, 404, 410), ownership, CORS for browser clients."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tusclient import client as tus_client

from ingester_gateway.reference.processes import ServerProcess, gateway, running, se_entry
from tests.kit import assert_error_envelope, eventually, http_call
from tests.resumable import (
    OFFSET_STREAM,
    TUS,
    TUS_VERSION,
    create,
    head,
    metadata,
    offset_of,
    patch,
    send_chunked,
    send_cut,
    status,
    wait_stored,
)
from tests.stack import Stack, assert_stored

MiB = 2**20
ORIGIN = "https://uploads.example"
EXPIRY = 1.5  # INGESTER_TUS_EXPIRY_SECONDS of the short-lived gateway


def staging_of(gw: ServerProcess) -> Path:
    return Path(gw.env["INGESTER_STATE_DIR"]) / "tus" / "staging"  # type: ignore[index]


def uploader(stack: Stack, data: bytes, **kwargs: object) -> tus_client.Uploader:
    client = tus_client.TusClient(stack.gw.url + TUS, headers=stack.keys.auth())
    return client.uploader(file_stream=io.BytesIO(data), **kwargs)


def stored_result(stack: Stack, path: str) -> dict[str, object]:
    result = wait_stored(stack.gw, stack.keys.auth(), path)["result"]
    assert isinstance(result, dict)
    return result


def test_options_advertise_the_protocol_and_every_extension(stack: Stack) -> None:
    answer = http_call(stack.gw, "OPTIONS", TUS)
    assert answer.status == 204
    headers = answer.headers
    assert headers["tus-resumable"] == "1.0.0" and headers["tus-version"] == "1.0.0"
    assert set(headers["tus-extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "expiration",
        "checksum",
        "checksum-trailer",
        "concatenation",
    }
    assert {"sha1", "sha256", "md5"} <= set(headers["tus-checksum-algorithm"].split(","))
    assert int(headers["tus-max-size"]) > 0
    assert headers["upload-limit"].startswith("min-size=0, max-size=")


def test_tuspy_uploads_and_the_stored_bytes_decode_to_the_original(stack: Stack) -> None:
    data = b"".join(b"line %06d of a log that compresses well\n" % i for i in range(80_000))
    up = uploader(
        stack,
        data,
        chunk_size=MiB,
        upload_checksum=True,
        metadata={"filename": "app.log", "filetype": "text/plain", "compression_algorithm": "zstd"},
    )
    up.upload()
    path = up.url.removeprefix(stack.gw.url)
    result = stored_result(stack, path)
    assert result["compression_algorithm"] == "zstd" and result["original_filename"] == "app.log"
    assert_stored(stack, result, data)
    after = head(stack.gw, stack.keys.auth(), path)
    assert after.headers["upload-state"] == "stored"
    assert after.headers["upload-file-id"] == result["file_id"]
    assert after.headers["cache-control"] == "no-store"
    assert not (staging_of(stack.gw) / path.removeprefix(TUS)).exists()  # removed once stored
    progress = http_call(
        stack.gw, "GET", f"/api/v1/uploads/{path.removeprefix(TUS)}", None, stack.keys.auth()
    )
    assert progress.status == 200 and progress.json()["state"] == "stored"
    assert progress.json()["file_id"] == result["file_id"]


def test_a_patch_cut_mid_body_keeps_what_arrived_and_tuspy_resumes(stack: Stack) -> None:
    data = os.urandom(3 * MiB + 123)
    path = create(stack.gw, stack.keys.auth(), len(data), {"filename": "cut.bin"})
    headers = {**TUS_VERSION, **OFFSET_STREAM, **stack.keys.auth(), "Upload-Offset": "0"}
    send_cut(stack.gw, "PATCH", path, headers, data, cut=MiB + 5000)
    kept = offset_of(stack.gw, stack.keys.auth(), path)
    assert 0 < kept <= MiB + 5000  # what arrived before the connection closed, and durable
    up = uploader(stack, data, url=stack.gw.url + path, chunk_size=MiB)
    assert up.offset == kept  # tuspy asked the server where to go on
    up.upload()
    assert_stored(stack, stored_result(stack, path), data)


def test_a_checksum_mismatch_is_460_and_the_offset_stays(stack: Stack) -> None:
    auth = stack.keys.auth()
    data = os.urandom(300_000)
    path = create(stack.gw, auth, len(data), {"filename": "sum.bin"})
    assert patch(stack.gw, auth, path, 0, data[:100_000]).status == 204
    wrong = base64.b64encode(hashlib.sha1(b"something else").digest()).decode()
    answer = patch(
        stack.gw, auth, path, 100_000, data[100_000:200_000], {"Upload-Checksum": f"sha1 {wrong}"}
    )
    assert_error_envelope(answer, 460, "upload_checksum_mismatch")
    assert offset_of(stack.gw, auth, path) == 100_000
    unknown = patch(
        stack.gw, auth, path, 100_000, data[100_000:], {"Upload-Checksum": "crc32 AA=="}
    )
    assert_error_envelope(unknown, 400, "unsupported_checksum")
    good = base64.b64encode(hashlib.md5(data[100_000:]).digest()).decode()
    answer = patch(
        stack.gw, auth, path, 100_000, data[100_000:], {"Upload-Checksum": f"md5 {good}"}
    )
    assert answer.status == 204 and answer.headers["upload-offset"] == str(len(data))
    assert_stored(stack, stored_result(stack, path), data)


def test_checksum_trailer_is_checked_after_the_data(stack: Stack) -> None:
    auth = stack.keys.auth()
    data = os.urandom(200_000)
    path = create(stack.gw, auth, len(data), {"filename": "trailer.bin"})
    headers = {**TUS_VERSION, **OFFSET_STREAM, **auth, "Upload-Offset": "0"}
    wrong = base64.b64encode(hashlib.sha256(b"no").digest()).decode()
    answer = send_chunked(
        stack.gw, "PATCH", path, headers, data, {"Upload-Checksum": f"sha256 {wrong}"}
    )
    assert answer.status == 460, answer
    assert offset_of(stack.gw, auth, path) == 0
    right = base64.b64encode(hashlib.sha256(data).digest()).decode()
    answer = send_chunked(
        stack.gw, "PATCH", path, headers, data, {"Upload-Checksum": f"sha256 {right}"}
    )
    assert answer.status == 204 and answer.headers["upload-offset"] == str(len(data))
    assert_stored(stack, stored_result(stack, path), data)


def test_another_users_upload_does_not_exist_for_them(stack: Stack) -> None:
    path = create(stack.gw, stack.keys.auth("alice"), 1000, {"filename": "mine.bin"})
    bob = stack.keys.auth("bob")
    assert head(stack.gw, bob, path).status == 404
    assert_error_envelope(patch(stack.gw, bob, path, 0, b"x" * 1000), 404, "not_found")
    assert http_call(stack.gw, "DELETE", path, None, {**TUS_VERSION, **bob}).status == 404
    assert (
        http_call(stack.gw, "GET", f"/api/v1/uploads/{path.removeprefix(TUS)}", None, bob).status
        == 404
    )
    assert offset_of(stack.gw, stack.keys.auth("alice"), path) == 0


def test_a_wrong_tus_version_is_412_and_names_ours(stack: Stack) -> None:
    answer = http_call(
        stack.gw,
        "POST",
        TUS,
        b"",
        {**stack.keys.auth(), "Tus-Resumable": "0.2.2", "Upload-Length": "10"},
    )
    assert_error_envelope(answer, 412, "tus_version")
    assert answer.headers["tus-version"] == "1.0.0"


def test_a_method_neither_protocol_knows_is_405_with_allow(stack: Stack) -> None:
    path = create(stack.gw, stack.keys.auth(), 10)
    for target, allowed in ((TUS, "OPTIONS, POST"), (path, "OPTIONS, HEAD, GET, PATCH, DELETE")):
        for method in ("TRACE", "PUT", "PROPFIND"):
            answer = http_call(stack.gw, method, target, b"", stack.keys.auth())  # no version
            assert_error_envelope(answer, 405, "method_not_allowed")
            assert answer.headers["allow"] == allowed


def test_bad_requests_get_the_statuses_tus_names(stack: Stack) -> None:
    auth = stack.keys.auth()
    cases = [
        ({"Upload-Length": "10", "Upload-Metadata": "filename !!notbase64"}, 400, "bad_request"),
        ({"Upload-Length": "-1"}, 400, "bad_request"),
        ({}, 400, "bad_request"),  # neither Upload-Length nor Upload-Defer-Length
        ({"Upload-Length": str(2**45)}, 413, "payload_too_large"),
        (
            {"Upload-Length": "10", "Upload-Metadata": metadata({"retention_policy": "forever"})},
            400,
            "invalid_parameter",
        ),
        (
            {"Upload-Length": "10", "Upload-Metadata": metadata({"ttl_days": "7"})},
            400,
            "invalid_parameter",
        ),  # ttl_days needs retention_policy=temporary
        (
            {"Upload-Length": "10", "Upload-Metadata": metadata({"metadata": '{"_ingester": 1}'})},
            400,
            "invalid_parameter",
        ),
    ]
    for headers, code, name in cases:
        answer = http_call(stack.gw, "POST", TUS, b"", {**TUS_VERSION, **auth, **headers})
        assert_error_envelope(answer, code, name)
    path = create(stack.gw, auth, 10, {"filename": "x.bin"})
    wrong_type = http_call(
        stack.gw, "PATCH", path, b"0123456789", {**TUS_VERSION, **auth, "Upload-Offset": "0"}
    )
    assert_error_envelope(wrong_type, 415, "unsupported_media_type")
    stale = patch(stack.gw, auth, path, 5, b"56789")
    assert_error_envelope(stale, 409, "offset_mismatch")
    assert stale.headers["upload-offset"] == "0"
    assert_error_envelope(patch(stack.gw, auth, path, 0, b"0123456789AB"), 413, "payload_too_large")
    assert offset_of(stack.gw, auth, path) == 0
    no_token = http_call(stack.gw, "HEAD", path, None, TUS_VERSION)
    assert no_token.status == 401


def test_creation_with_upload_defer_length_and_method_override(stack: Stack) -> None:
    auth = stack.keys.auth()
    data = os.urandom(150_000)
    answer = http_call(
        stack.gw,
        "POST",
        TUS,
        data[:50_000],
        {
            **TUS_VERSION,
            **OFFSET_STREAM,
            **auth,
            "Upload-Defer-Length": "1",
            "Upload-Metadata": metadata({"filename": "deferred.bin"}),
        },
    )
    assert answer.status == 201 and answer.headers["upload-offset"] == "50000"
    path = answer.headers["location"]
    assert "upload-expires" in answer.headers
    assert head(stack.gw, auth, path).headers["upload-defer-length"] == "1"
    answer = http_call(
        stack.gw,
        "POST",
        path,
        data[50_000:],
        {
            **TUS_VERSION,
            **OFFSET_STREAM,
            **auth,
            "Upload-Offset": "50000",
            "Upload-Length": str(len(data)),
            "X-HTTP-Method-Override": "PATCH",
        },
    )
    assert answer.status == 204 and answer.headers["upload-offset"] == str(len(data))
    assert_stored(stack, stored_result(stack, path), data)


def test_termination_removes_the_upload_and_its_staged_bytes(stack: Stack) -> None:
    auth = stack.keys.auth()
    path = create(stack.gw, auth, 100_000, {"filename": "gone.bin"})
    assert patch(stack.gw, auth, path, 0, b"x" * 40_000).status == 204
    staged = staging_of(stack.gw) / path.removeprefix(TUS)
    assert staged.stat().st_size == 40_000
    answer = http_call(stack.gw, "DELETE", path, None, {**TUS_VERSION, **auth})
    assert answer.status == 204 and answer.headers["tus-resumable"] == "1.0.0"
    assert head(stack.gw, auth, path).status == 404
    assert not staged.exists()


def test_partial_uploads_concatenate_into_the_stored_file(stack: Stack) -> None:
    auth = stack.keys.auth()
    data = os.urandom(2 * MiB + 999)
    cuts = [0, 700_000, 1_500_000, len(data)]
    parts: list[str] = []
    for start, end in itertools.pairwise(cuts):
        parts.append(create(stack.gw, auth, end - start, headers={"Upload-Concat": "partial"}))

    def send(index: int) -> None:  # the parts go up in parallel, as `--parallel N` would
        answer = patch(stack.gw, auth, parts[index], 0, data[cuts[index] : cuts[index + 1]])
        assert answer.status == 204, answer

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(parts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert head(stack.gw, auth, parts[0]).headers["upload-concat"] == "partial"
    unfinished = create(stack.gw, auth, 10, headers={"Upload-Concat": "partial"})
    refused = http_call(
        stack.gw, "POST", TUS, b"", {**TUS_VERSION, **auth, "Upload-Concat": f"final;{unfinished}"}
    )
    assert_error_envelope(refused, 400, "partial_unfinished")
    answer = http_call(
        stack.gw,
        "POST",
        TUS,
        b"",
        {
            **TUS_VERSION,
            **auth,
            "Upload-Concat": "final;" + " ".join(parts),
            "Upload-Metadata": metadata({"filename": "joined.bin"}),
        },
    )
    assert answer.status == 201
    final = answer.headers["location"]
    assert head(stack.gw, auth, final).headers["upload-concat"].startswith("final;")
    assert_error_envelope(patch(stack.gw, auth, final, len(data), b"x"), 403, "final_upload")
    result = stored_result(stack, final)
    assert result["original_filename"] == "joined.bin"
    assert_stored(stack, result, data)
    for part in parts:  # consumed by their final upload
        assert not (staging_of(stack.gw) / part.removeprefix(TUS)).exists()


# -- a gateway with short-lived uploads, CORS, and no service account --------------------


@pytest.fixture(scope="module")
def short_lived(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("tus-short")
    env = {"INGESTER_TUS_EXPIRY_SECONDS": str(EXPIRY), "INGESTER_CORS_ORIGINS": ORIGIN}
    gw = gateway(workdir, stack.keys.public_path, [se_entry(stack.se)], env=env, name="gw-short")
    with running(gw):
        yield gw


def test_an_expired_upload_is_gone_and_so_are_its_staged_bytes(
    stack: Stack, short_lived: ServerProcess
) -> None:
    auth = stack.keys.auth()
    path = create(short_lived, auth, 10_000, {"filename": "late.bin"})
    answer = patch(short_lived, auth, path, 0, b"y" * 4000)
    assert answer.status == 204 and "upload-expires" in answer.headers
    staged = staging_of(short_lived) / path.removeprefix(TUS)
    assert staged.exists()
    eventually(lambda: head(short_lived, auth, path).status in (404, 410), 20, "expiry")
    eventually(lambda: not staged.exists(), 20, "the staged file's removal")
    assert head(short_lived, auth, path).status == 404
    assert patch(short_lived, auth, path, 4000, b"y" * 6000).status in (404, 410)


def test_without_a_service_account_the_owners_token_stores_it(
    stack: Stack, short_lived: ServerProcess
) -> None:
    data = os.urandom(500_000)
    client = tus_client.TusClient(short_lived.url + TUS, headers=stack.keys.auth())
    up = client.uploader(file_stream=io.BytesIO(data), chunk_size=200_000)
    up.upload()
    path = up.url.removeprefix(short_lived.url)
    result = wait_stored(short_lived, stack.keys.auth(), path)["result"]
    assert stack.download(result["file_id"]) == data


def test_cors_preflight_and_exposed_headers_for_an_allowed_origin(
    stack: Stack, short_lived: ServerProcess
) -> None:
    preflight = http_call(
        short_lived,
        "OPTIONS",
        TUS,
        None,
        {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, tus-resumable, upload-length",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "PATCH" in preflight.headers["access-control-allow-methods"]
    allowed = preflight.headers["access-control-allow-headers"].lower()
    for name in (
        "authorization",
        "tus-resumable",
        "upload-length",
        "upload-offset",
        "upload-metadata",
        "upload-checksum",
        "upload-concat",
        "upload-complete",
    ):
        assert name in allowed, name
    answer = http_call(
        short_lived,
        "POST",
        TUS,
        b"",
        {
            **TUS_VERSION,
            **stack.keys.auth(),
            "Origin": ORIGIN,
            "Upload-Length": "5",
        },
    )
    assert answer.status == 201 and answer.headers["access-control-allow-origin"] == ORIGIN
    exposed = answer.headers["access-control-expose-headers"].lower()
    for name in ("location", "upload-offset", "upload-length", "tus-resumable", "upload-expires"):
        assert name in exposed, name
    stranger = http_call(
        short_lived,
        "OPTIONS",
        TUS,
        None,
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert_error_envelope(stranger, 403, "origin_not_allowed")
    closed = http_call(
        stack.gw, "OPTIONS", TUS, None, {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in closed.headers  # closed by default
    status(short_lived, stack.keys.auth(), answer.headers["location"])


def test_an_empty_upload_is_complete_at_its_creation(stack: Stack) -> None:
    auth = stack.keys.auth()
    path = create(stack.gw, auth, 0, {"filename": "empty.txt"})
    result = wait_stored(stack.gw, auth, path)["result"]
    assert (result["file_size"], result["original_filename"]) == (0, "empty.txt")
    assert stack.download(result["file_id"]) == b""
