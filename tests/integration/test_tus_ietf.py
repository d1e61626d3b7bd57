"""The IETF resumable-upload draft (interop version 8) on the same endpoint, over raw
HTTP with the draft's own fields: creation, an append cut mid-body, offset retrieval,
resumption, completion, cancellation, limits and RFC 9530 digests."""

from __future__ import annotations

import base64
import hashlib
import os
import time

from tests.kit import assert_error_envelope, http_call
from tests.resumable import IETF, PARTIAL_UPLOAD, TUS, head, offset_of, send_cut, wait_stored
from tests.stack import Stack, assert_stored

MiB = 2**20


def sf_digest(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def test_create_cut_resume_complete_gives_the_same_bytes(stack: Stack) -> None:
    auth = stack.keys.auth()
    data = os.urandom(2 * MiB + 4321)
    created = http_call(
        stack.gw,
        "POST",
        TUS,
        data[:300_000],
        {
            **IETF,
            **auth,
            "Upload-Complete": "?0",
            "Upload-Length": str(len(data)),
            "Content-Type": "application/octet-stream",
            "Content-Disposition": "inline; filename*=UTF-8''r%C3%A9sum%C3%A9.bin",
        },
    )
    assert created.status == 201, created.body
    assert created.headers["upload-complete"] == "?0"
    assert created.headers["upload-offset"] == "300000"
    assert created.headers["upload-draft-interop-version"] == "8"
    assert "max-age=" in created.headers["upload-limit"]
    path = created.headers["location"]
    append = {**IETF, **auth, **PARTIAL_UPLOAD, "Upload-Complete": "?1", "Upload-Offset": "300000"}
    send_cut(stack.gw, "PATCH", path, append, data[300_000:], cut=700_000)
    state = head(stack.gw, auth, path, ietf=True)
    assert state.status == 204
    offset = int(state.headers["upload-offset"])
    assert 300_000 < offset <= 1_000_000  # the cut append's bytes that arrived
    assert state.headers["upload-complete"] == "?0"  # a cut append never completes it
    assert state.headers["upload-length"] == str(len(data))
    assert state.headers["cache-control"] == "no-store"
    assert state.headers["upload-limit"].startswith("min-size=0, max-size=")
    stale = http_call(
        stack.gw, "PATCH", path, data[offset - 10 :], {**append, "Upload-Offset": str(offset - 10)}
    )
    assert_error_envelope(stale, 409, "offset_mismatch")
    assert stale.headers["upload-offset"] == str(offset)
    assert stale.headers["upload-complete"] == "?0"
    done = http_call(
        stack.gw, "PATCH", path, data[offset:], {**append, "Upload-Offset": str(offset)}
    )
    assert done.status == 202, done.body
    assert done.headers["upload-complete"] == "?1"
    assert done.json()["upload_id"] == path.removeprefix(TUS)
    result = wait_stored(stack.gw, auth, path)["result"]
    assert result["original_filename"] == "résumé.bin"
    assert_stored(stack, result, data)
    after = head(stack.gw, auth, path, ietf=True)
    assert after.headers["upload-complete"] == "?1"
    assert after.headers["repr-digest"] == sf_digest(data)
    assert after.headers["upload-file-id"] == result["file_id"]


def test_one_request_with_a_representation_digest(stack: Stack) -> None:
    auth = stack.keys.auth()
    data = b"the whole file in one request\n" * 1000
    answer = http_call(
        stack.gw,
        "POST",
        f"{TUS}?retention_policy=temporary&ttl_days=3",
        data,
        {
            **IETF,
            **auth,
            "Upload-Complete": "?1",
            "Content-Type": "text/plain",
            "Repr-Digest": sf_digest(data),
            "Content-Disposition": 'inline; filename="notes.txt"',
        },
    )
    assert answer.status == 202 and answer.headers["upload-complete"] == "?1"
    result = wait_stored(stack.gw, auth, answer.headers["location"])["result"]
    assert (result["retention_policy"], result["ttl_days"]) == ("temporary", 3)
    assert result["checksum"] == hashlib.sha256(data).hexdigest()
    assert_stored(stack, result, data)


def test_a_representation_digest_that_does_not_match_fails_the_upload(stack: Stack) -> None:
    auth = stack.keys.auth()
    data = os.urandom(50_000)
    answer = http_call(
        stack.gw,
        "POST",
        TUS,
        data,
        {
            **IETF,
            **auth,
            "Upload-Complete": "?1",
            "Repr-Digest": sf_digest(b"other bytes"),
        },
    )
    assert answer.status == 202
    path = answer.headers["location"]
    deadline = time.monotonic() + 60
    while (state := http_call(stack.gw, "GET", path, None, {**IETF, **auth}).json())["state"] != (
        "failed"
    ):
        assert state["state"] != "stored" and time.monotonic() < deadline, state
        time.sleep(0.1)
    assert "sha256" in state["error"]


def test_a_content_digest_mismatch_keeps_nothing_of_that_append(stack: Stack) -> None:
    auth = stack.keys.auth()
    created = http_call(stack.gw, "POST", TUS, b"", {**IETF, **auth, "Upload-Complete": "?0"})
    path = created.headers["location"]
    append = {**IETF, **auth, **PARTIAL_UPLOAD, "Upload-Complete": "?0", "Upload-Offset": "0"}
    wrong = http_call(
        stack.gw, "PATCH", path, b"a" * 1000, {**append, "Content-Digest": sf_digest(b"b" * 1000)}
    )
    assert_error_envelope(wrong, 422, "digest_mismatch")
    assert offset_of(stack.gw, auth, path, ietf=True) == 0
    right = http_call(
        stack.gw, "PATCH", path, b"a" * 1000, {**append, "Content-Digest": sf_digest(b"a" * 1000)}
    )
    assert right.status == 204 and right.headers["upload-offset"] == "1000"
    # An empty append that says the upload is complete: its length is what came.
    end = http_call(
        stack.gw, "PATCH", path, b"", {**append, "Upload-Offset": "1000", "Upload-Complete": "?1"}
    )
    assert end.status == 202
    assert stack.download(wait_stored(stack.gw, auth, path)["file_id"]) == b"a" * 1000


def test_cancellation_and_bad_appends(stack: Stack) -> None:
    auth = stack.keys.auth()
    options = http_call(stack.gw, "OPTIONS", TUS, None, IETF)
    assert options.headers["upload-limit"].startswith("min-size=0")
    missing = http_call(stack.gw, "POST", TUS, b"", {**IETF, **auth})
    assert_error_envelope(missing, 400, "bad_request")  # no Upload-Complete
    created = http_call(stack.gw, "POST", TUS, b"", {**IETF, **auth, "Upload-Complete": "?0"})
    path = created.headers["location"]
    octet = http_call(
        stack.gw,
        "PATCH",
        path,
        b"x",
        {
            **IETF,
            **auth,
            "Upload-Complete": "?0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert_error_envelope(octet, 415, "unsupported_media_type")
    gone = http_call(stack.gw, "DELETE", path, None, {**IETF, **auth})
    assert gone.status == 204
    assert head(stack.gw, auth, path, ietf=True).status == 404


def test_an_empty_creation_that_is_complete_is_stored(stack: Stack) -> None:
    auth = stack.keys.auth()
    answer = http_call(stack.gw, "POST", TUS, b"", {**IETF, **auth, "Upload-Complete": "?1"})
    assert answer.status == 202 and answer.headers["upload-complete"] == "?1"
    assert stack.download(wait_stored(stack.gw, auth, answer.headers["location"])["file_id"]) == b""
