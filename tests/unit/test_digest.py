"""The client's claimed sha256: RFC 9530 Content-Digest and X-Checksum-SHA256."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.errors import ApiError
from ingester_gateway.pipeline.digest import claimed_sha256

DIGEST = hashlib.sha256(b"hello").digest()
OTHER = hashlib.sha256(b"other").digest()


def rfc9530(digest: bytes, algorithm: str = "sha-256") -> str:
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


def malformed(content_digest: str | None, checksum: str | None) -> ApiError:
    with pytest.raises(ApiError) as info:
        claimed_sha256(content_digest, checksum)
    assert (info.value.status, info.value.code) == (400, "invalid_digest")
    return info.value


def test_no_headers_claim_nothing() -> None:
    assert claimed_sha256(None, None) is None
    assert claimed_sha256("", "") is None


def test_a_content_digest_sha256_is_read() -> None:
    assert claimed_sha256(rfc9530(DIGEST), None) == DIGEST


def test_other_algorithms_beside_sha256_are_ignored() -> None:
    sha512 = rfc9530(hashlib.sha512(b"hello").digest(), "sha-512")
    header = f"{sha512}, {rfc9530(DIGEST)} , unixsum=:AAAA:"
    assert claimed_sha256(header, None) == DIGEST


def test_only_other_algorithms_claim_nothing() -> None:
    assert claimed_sha256(rfc9530(hashlib.sha512(b"x").digest(), "sha-512"), None) is None


def test_the_algorithm_name_is_case_insensitive() -> None:
    assert claimed_sha256(rfc9530(DIGEST, "SHA-256"), None) == DIGEST


@pytest.mark.parametrize("text", [DIGEST.hex(), DIGEST.hex().upper(), f"  {DIGEST.hex()}  "])
def test_a_hex_checksum_header_is_read(text: str) -> None:
    assert claimed_sha256(None, text) == DIGEST


def test_both_headers_agreeing_are_accepted() -> None:
    assert claimed_sha256(rfc9530(DIGEST), DIGEST.hex()) == DIGEST


def test_both_headers_disagreeing_are_400() -> None:
    assert "disagree" in malformed(rfc9530(DIGEST), OTHER.hex()).message


def test_two_sha256_entries_disagreeing_are_400() -> None:
    malformed(f"{rfc9530(DIGEST)}, {rfc9530(OTHER)}", None)


@pytest.mark.parametrize(
    "header",
    [
        "sha-256",
        "sha-256=abc",
        "sha-256=:not base64!:",
        "sha-256=:YWJj:",  # valid base64, but 3 bytes
        f"sha-256={base64.b64encode(DIGEST).decode()}",  # colons missing
        "sha-256=:" + base64.b64encode(DIGEST).decode()[:-2] + ":",  # broken padding
        f"{rfc9530(DIGEST)};q=1",
        ",",
    ],
)
def test_a_malformed_content_digest_is_400(header: str) -> None:
    malformed(header, None)


@pytest.mark.parametrize(
    "checksum", ["abc", DIGEST.hex()[:-1], DIGEST.hex() + "0", "g" * 64, base64.b64encode(DIGEST)]
)
def test_a_malformed_checksum_header_is_400(checksum: str | bytes) -> None:
    text = checksum.decode() if isinstance(checksum, bytes) else checksum
    malformed(None, text)


@given(st.binary(min_size=32, max_size=32))
def test_any_digest_round_trips_through_both_headers(digest: bytes) -> None:
    assert claimed_sha256(rfc9530(digest), digest.hex()) == digest


@given(st.text(max_size=100), st.text(max_size=80))
def test_any_header_text_gives_a_digest_none_or_400(content_digest: str, checksum: str) -> None:
    try:
        result = claimed_sha256(content_digest, checksum)
    except ApiError as exc:
        assert exc.status == 400
    else:
        assert result is None or len(result) == 32
