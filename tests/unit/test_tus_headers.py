"""The header fields of resumable uploads, parsed and written without a server: tus's
plain text, RFC 9651 Structured Fields, RFC 9530 digests, Content-Disposition."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.errors import ApiError
from ingester_gateway.resumable.headers import (
    content_digest_checksum,
    disposition_filename,
    format_digest,
    format_metadata,
    http_date,
    parse_concat,
    parse_digests,
    parse_metadata,
    parse_upload_checksum,
    repr_sha256,
    sf_boolean,
    sf_dictionary,
    sf_integer,
    tus_integer,
)


def code_of(call: object) -> tuple[int, str]:
    assert callable(call)
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value.status, caught.value.code


def test_integers_are_plain_non_negative_decimals() -> None:
    assert tus_integer("42", "Upload-Offset") == 42
    assert tus_integer(None, "Upload-Offset") is None
    assert sf_integer("7;param=1", "Upload-Offset") == 7  # parameters do not change an Item
    for bad in ("-1", "1.5", "", "0x10", "1" * 16):
        assert code_of(lambda bad=bad: tus_integer(bad, "Upload-Length")) == (400, "bad_request")
        assert code_of(lambda bad=bad: sf_integer(bad, "Upload-Offset")) == (400, "bad_request")


def test_booleans_are_structured_field_booleans() -> None:
    assert sf_boolean("?1", "Upload-Complete") is True
    assert sf_boolean("?0", "Upload-Complete") is False
    assert sf_boolean(None, "Upload-Complete") is None
    for bad in ("true", "1", "?", "?2"):
        assert code_of(lambda bad=bad: sf_boolean(bad, "Upload-Complete")) == (400, "bad_request")


def test_upload_limit_is_a_dictionary_of_integers() -> None:
    assert sf_dictionary([("min-size", 0), ("max-age", 3600)]) == "min-size=0, max-age=3600"


@given(
    st.dictionaries(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True), st.text(max_size=40))
)
def test_upload_metadata_round_trips(fields: dict[str, str]) -> None:
    assert parse_metadata(format_metadata(fields)) == fields


def test_upload_metadata_refuses_what_tus_forbids() -> None:
    assert parse_metadata("is_draft,filename ZS50eHQ=") == {"is_draft": "", "filename": "e.txt"}
    for bad in ("filename !!!", "a YQ==,a Yg==", "a b c", "a YQ==,,b Yg==", "name /w=="):
        assert code_of(lambda bad=bad: parse_metadata(bad)) == (400, "bad_request"), bad


def test_upload_checksum_names_an_offered_algorithm() -> None:
    digest = hashlib.sha1(b"x").digest()
    checksum = parse_upload_checksum(f"sha1 {base64.b64encode(digest).decode()}")
    assert checksum is not None and checksum.digest == digest and checksum.algorithm == "sha1"
    assert code_of(lambda: parse_upload_checksum("crc32 AAAA")) == (400, "unsupported_checksum")
    assert code_of(lambda: parse_upload_checksum("sha256 not base64!")) == (400, "bad_request")


def test_rfc9530_digests() -> None:
    digest = hashlib.sha256(b"abc").digest()
    field = format_digest("sha-256", digest)
    assert parse_digests(f"{field}, unixsum=12", "Repr-Digest") == {"sha-256": digest}
    assert repr_sha256(field) == digest
    both = f"{field}, {format_digest('sha-512', hashlib.sha512(b'abc').digest())}"
    strongest = content_digest_checksum(both)
    assert strongest is not None and strongest.algorithm == "sha512"
    assert code_of(lambda: parse_digests("sha-256=:%%%:", "Content-Digest")) == (
        400,
        "invalid_digest",
    )
    assert code_of(lambda: repr_sha256("sha-256=:AAAA:")) == (400, "invalid_digest")


def test_concat_names_uploads_of_this_server() -> None:
    prefix = "/api/v1/tus/"
    assert parse_concat("partial", prefix) is not None
    final = parse_concat("final;/api/v1/tus/abcdefgh http://h:1/api/v1/tus/ijklmnop", prefix)
    assert final is not None and final.parts == ("abcdefgh", "ijklmnop")
    for bad in ("final;", "final;/elsewhere/abc", "final;/api/v1/tus/a/b", "both"):
        assert code_of(lambda bad=bad: parse_concat(bad, prefix)) == (400, "bad_request"), bad


def test_concat_takes_the_urls_given_out_behind_a_proxy_that_mounts_us() -> None:
    prefix = "/api/v1/tus/"
    urls = "final;https://gw:8443/ingester/api/v1/tus/abcdefgh /api/v1/tus/ijklmnop"
    final = parse_concat(urls, prefix, "/ingester")
    assert final is not None and final.parts == ("abcdefgh", "ijklmnop")
    elsewhere = "final;/other/api/v1/tus/abcdefgh"
    assert code_of(lambda: parse_concat(elsewhere, prefix, "/ingester")) == (400, "bad_request")


def test_content_disposition_filename() -> None:
    assert disposition_filename('inline; filename="a \\"b\\".txt"') == 'a "b".txt'
    assert disposition_filename("attachment; filename=plain.bin") == "plain.bin"
    assert (
        disposition_filename("inline; filename=x; filename*=UTF-8''%C3%A9t%C3%A9.txt") == "été.txt"
    )
    assert disposition_filename('inline; filename="semi;colon.txt"') == "semi;colon.txt"
    assert disposition_filename("inline") is None and disposition_filename(None) is None


def test_http_dates_are_imf_fixdate() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
