"""The rules of resumable uploads without a server: which dialect a request speaks, what
its headers ask for, how an upload's state moves, and what each answer says."""

from __future__ import annotations

import base64
import hashlib

import msgspec
import pytest

from ingester_gateway.errors import ApiError
from ingester_gateway.models import UploadResult
from ingester_gateway.resumable import protocol
from ingester_gateway.resumable.state import (
    Owner,
    UploadState,
    appended,
    check_append,
    check_visible,
    declare_length,
    failed,
    finished_partial,
    progress_of,
    retried,
    room,
    status_of,
    stored,
    touched,
)

MAX = 1000
ALICE = Owner("alice", "user")


def state(**changes: object) -> UploadState:
    base = UploadState(
        id="a" * 32,
        owner=ALICE,
        dialect="tus",
        created_at=100.0,
        expires_at=200.0,
        length=10,
        filename="f.bin",
    )
    return msgspec.structs.replace(base, **changes)


def problem(call: object) -> tuple[int, str]:
    assert callable(call)
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value.status, caught.value.code


def headers_dict(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in pairs}


# -- requests ------------------------------------------------------------------------------


def test_the_dialect_is_chosen_per_request() -> None:
    assert protocol.dialect_of({"upload-draft-interop-version": "8"}) == "ietf"
    assert protocol.dialect_of({"upload-draft-interop-version": "6"}) == "tus"
    assert protocol.dialect_of({"tus-resumable": "1.0.0"}) == "tus"


def test_tus_requests_must_name_the_version_except_reads() -> None:
    protocol.check_version("POST", "tus", {"tus-resumable": "1.0.0"})
    protocol.check_version("HEAD", "tus", {})
    protocol.check_version("PATCH", "ietf", {})
    assert problem(lambda: protocol.check_version("PATCH", "tus", {})) == (412, "tus_version")


def test_method_override_only_on_post() -> None:
    assert protocol.method_of("POST", {"x-http-method-override": "patch"}) == "PATCH"
    assert protocol.method_of("GET", {"x-http-method-override": "DELETE"}) == "GET"


def test_tus_creation() -> None:
    meta = "filename " + base64.b64encode(b"r.csv").decode() + ",retention_policy dGVtcG9yYXJ5"
    creation = protocol.creation_of(
        "tus",
        {
            "upload-length": "10",
            "upload-metadata": meta,
            "content-length": "4",
            "content-type": "application/offset+octet-stream",
        },
        {"ttl_days": "3"},
        MAX,
    )
    assert (creation.length, creation.filename, creation.body) == (10, "r.csv", True)
    assert (creation.options.retention_policy, creation.options.ttl_days) == ("temporary", 3)
    deferred = protocol.creation_of("tus", {"upload-defer-length": "1"}, {}, MAX)
    assert deferred.length is None and deferred.filename == "upload.bin" and not deferred.body
    final = protocol.creation_of("tus", {"upload-concat": "final;/api/v1/tus/abcdefgh"}, {}, MAX)
    assert final.concat is not None and final.concat.parts == ("abcdefgh",)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (400, "bad_request")),
        ({"upload-length": "5", "upload-defer-length": "1"}, (400, "bad_request")),
        ({"upload-defer-length": "2"}, (400, "bad_request")),
        ({"upload-length": "1001"}, (413, "payload_too_large")),
        (
            {"upload-concat": "final;/api/v1/tus/abcdefgh", "upload-length": "3"},
            (400, "bad_request"),
        ),
        (
            {
                "upload-concat": "final;/api/v1/tus/abcdefgh",
                "content-length": "3",
                "content-type": "application/offset+octet-stream",
            },
            (403, "final_upload"),
        ),
        (
            {"upload-length": "5", "upload-metadata": "compress bm9wZQ=="},
            (400, "invalid_parameter"),
        ),
    ],
)
def test_tus_creation_refusals(headers: dict[str, str], expected: tuple[int, str]) -> None:
    assert problem(lambda: protocol.creation_of("tus", headers, {}, MAX)) == expected


def test_ietf_creation_takes_the_length_from_a_complete_request() -> None:
    creation = protocol.creation_of(
        "ietf",
        {
            "upload-complete": "?1",
            "content-length": "7",
            "content-type": "text/csv",
            "content-disposition": 'inline; filename="d.csv"',
        },
        {},
        MAX,
    )
    assert (creation.length, creation.complete, creation.filetype) == (7, True, "text/csv")
    assert creation.filename == "d.csv" and creation.data().size == 7
    assert problem(lambda: protocol.creation_of("ietf", {}, {}, MAX)) == (400, "bad_request")
    mismatch = {"upload-complete": "?1", "content-length": "7", "upload-length": "8"}
    assert problem(lambda: protocol.creation_of("ietf", mismatch, {}, MAX)) == (
        400,
        "inconsistent_length",
    )


def test_appends() -> None:
    digest = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    tus = protocol.append_of(
        "tus",
        {
            "content-type": "application/offset+octet-stream",
            "upload-offset": "5",
            "content-length": "3",
            "upload-checksum": f"sha256 {digest}",
        },
    )
    assert (tus.offset, tus.size, tus.empty, tus.complete) == (5, 3, False, False)
    assert tus.checksum is not None and tus.checksum.algorithm == "sha256"
    ietf = protocol.append_of(
        "ietf",
        {
            "content-type": "application/partial-upload",
            "upload-offset": "5",
            "upload-complete": "?1",
            "content-length": "3",
        },
    )
    assert (ietf.length, ietf.complete) == (8, True)
    trailer = protocol.append_of(
        "tus",
        {
            "content-type": "application/offset+octet-stream",
            "upload-offset": "0",
            "transfer-encoding": "chunked",
            "trailer": "Upload-Checksum",
        },
    )
    assert trailer.trailer_checksum and not trailer.empty
    wrong_type = {"content-type": "application/octet-stream", "upload-offset": "0"}
    assert problem(lambda: protocol.append_of("tus", wrong_type))[0] == 415
    no_offset = {"content-type": "application/offset+octet-stream"}
    assert problem(lambda: protocol.append_of("tus", no_offset)) == (400, "bad_request")


# -- state ---------------------------------------------------------------------------------


def test_an_upload_is_visible_to_its_owner_until_it_expires() -> None:
    upload = state()
    assert check_visible(upload, "alice", 150.0) is upload
    assert problem(lambda: check_visible(upload, "bob", 150.0)) == (404, "not_found")
    assert problem(lambda: check_visible(None, "alice", 150.0)) == (404, "not_found")
    assert problem(lambda: check_visible(upload, "alice", 200.0)) == (410, "upload_expired")
    storing = state(phase="storing")
    assert check_visible(storing, "alice", 500.0) is storing  # a store in progress never expires


def test_appends_go_at_the_offset_of_an_upload_that_is_not_final() -> None:
    with pytest.raises(ApiError) as caught:
        check_append(state(offset=4), 3)
    assert caught.value.status == 409 and (b"upload-offset", b"4") in caught.value.headers
    assert problem(lambda: check_append(state(parts=["b" * 32]), 0)) == (403, "final_upload")
    check_append(state(offset=4), 4)


def test_lengths_may_be_declared_once_and_never_below_the_offset() -> None:
    deferred = state(length=None, offset=4)
    assert room(deferred, MAX) == MAX - 4
    declare_length(deferred, 9, MAX)
    assert deferred.length == 9 and room(deferred, MAX) == 5
    assert problem(lambda: declare_length(deferred, 8, MAX)) == (400, "inconsistent_length")
    assert problem(lambda: declare_length(state(length=None, offset=4), 3, MAX))[0] == 400
    assert problem(lambda: declare_length(state(length=None), MAX + 1, MAX))[0] == 413


def test_the_last_byte_completes_an_upload_but_not_a_partial_one() -> None:
    upload = state()
    appended(upload, 6, now=150.0, expiry=100.0)
    assert (upload.phase, upload.expires_at) == ("receiving", 250.0)
    appended(upload, 10, now=160.0, expiry=100.0)
    assert upload.phase == "complete" and not upload.receiving
    partial = state(partial=True)
    appended(partial, 10, now=150.0, expiry=100.0)
    assert partial.phase == "receiving" and finished_partial(partial)
    touched(upload, now=100.0, expiry=10.0)
    assert upload.expires_at == 260.0  # never shortened


def test_stored_failed_and_retried() -> None:
    result = UploadResult(
        file_id="f-1",
        original_filename="f.bin",
        storage_filename="f.bin",
        content_type="application/octet-stream",
        file_size=10,
        stored_size=10,
        compressed=False,
        compression_algorithm="none",
        compression_ratio=1.0,
        checksum="00" * 32,
        stored_checksum="00" * 32,
        uploaded_at="2026-01-01T00:00:00.000Z",
        storage_element_id="se-1",
        storage_element_url="http://se",
        retention_policy="permanent",
        ttl_expires_at=None,
        upload_id="a" * 32,
    )
    upload = state(offset=10, phase="storing")
    failed(upload, "no node", now=300.0, expiry=50.0)
    assert (upload.phase, upload.error, upload.expires_at) == ("failed", "no node", 350.0)
    assert progress_of(upload).state == "failed"
    retried(upload, now=310.0, expiry=50.0)
    assert (upload.phase, upload.error) == ("complete", None)
    assert progress_of(upload).state == "storing"
    stored(upload, result, now=320.0, expiry=50.0)
    progress = progress_of(upload)
    assert (progress.state, progress.file_id, progress.bytes_received) == ("stored", "f-1", 10)
    assert status_of(upload).file_id == "f-1"


# -- answers -------------------------------------------------------------------------------


def test_offset_reads_per_dialect() -> None:
    upload = state(offset=4, metadata={"filename": "f.bin"}, partial=True)
    tus = headers_dict(protocol.state_headers("tus", upload, now=150.0, max_size=MAX))
    assert tus["upload-offset"] == "4" and tus["upload-length"] == "10"
    assert tus["cache-control"] == "no-store" and tus["upload-concat"] == "partial"
    assert tus["tus-resumable"] == "1.0.0" and "upload-expires" in tus
    ietf = headers_dict(protocol.state_headers("ietf", state(length=None), now=150.0, max_size=MAX))
    assert ietf["upload-complete"] == "?0" and "upload-length" not in ietf
    assert ietf["upload-limit"] == "min-size=0, max-size=1000, max-age=50"
    assert ietf["upload-draft-interop-version"] == "8"
    final = headers_dict(protocol.state_headers("tus", state(parts=["b" * 32]), 150.0, MAX))
    assert final["upload-concat"] == "final;/api/v1/tus/" + "b" * 32


def test_discovery_and_creation_answers() -> None:
    options = headers_dict(protocol.discovery(MAX))
    assert options["tus-max-size"] == "1000" and "checksum-trailer" in options["tus-extension"]
    created = headers_dict(protocol.created_headers("ietf", state(), now=150.0, max_size=MAX))
    assert created["location"] == "/api/v1/tus/" + "a" * 32
    assert created["upload-complete"] == "?0" and created["upload-state"] == "receiving"


def test_urls_handed_out_start_where_a_trusted_proxy_says_the_client_reached_us() -> None:
    base = "https://gw.example:8443/ingester"
    created = headers_dict(protocol.created_headers("tus", state(), 150.0, MAX, base))
    assert created["location"] == base + "/api/v1/tus/" + "a" * 32
    final = headers_dict(protocol.state_headers("tus", state(parts=["b" * 32]), 150.0, MAX, base))
    assert final["upload-concat"] == f"final;{base}/api/v1/tus/" + "b" * 32
    mounted = protocol.creation_of(
        "tus", {"upload-concat": f"final;{base}/api/v1/tus/abcdefgh"}, {}, MAX, "/ingester"
    )
    assert mounted.concat is not None and mounted.concat.parts == ("abcdefgh",)
