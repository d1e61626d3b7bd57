"""Content types judged from the first bytes, the client's claim, and the allow-list."""

from __future__ import annotations

import gzip
import io
import zipfile

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.pipeline.sniff import (
    OCTET_STREAM,
    Sniffed,
    content_type_allowed,
    resolve_content_type,
    sniff,
)


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.txt", "hello")
    return out.getvalue()


@pytest.mark.parametrize(
    ("head", "content_type", "compressed"),
    [
        (gzip.compress(b"hello", mtime=0), "application/gzip", True),
        (zstandard.ZstdCompressor().compress(b"hello"), "application/zstd", True),
        (zip_bytes(), "application/zip", True),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png", True),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg", True),
        (b"GIF89a\x01\x00", "image/gif", True),
        (b"GIF87a\x01\x00", "image/gif", True),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "video/mp4", True),
        (b"\x00\x00\x00\x18ftypqt  ", "video/quicktime", True),
        (b"\x00\x00\x00\x1cftypheic", "image/heic", True),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp", True),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav", False),
        (b"BZh91AY&SY", "application/x-bzip2", True),
        (b"\xfd7zXZ\x00\x00", "application/x-xz", True),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "application/pdf", False),
        (b"\x7fELF\x02\x01\x01", "application/x-executable", False),
        (b"\x00" * 257 + b"ustar\x0000", "application/x-tar", False),
        (b"hello, world\nsecond line\n", "text/plain", False),
        ("città, naïve\n".encode(), "text/plain", False),
        (b'  {"a": 1, "b": [1, 2]}', "application/json", False),
        (b"[1, 2, 3]", "application/json", False),
        (b'<?xml version="1.0"?><a/>', "application/xml", False),
        (b"<!DOCTYPE html><html></html>", "text/html", False),
        (b"\x00\x01\x02\x03binary\xff", OCTET_STREAM, False),
        (b"", OCTET_STREAM, False),
    ],
)
def test_signatures(head: bytes, content_type: str, compressed: bool) -> None:
    assert sniff(head) == Sniffed(content_type, compressed)


def test_a_multibyte_character_cut_at_the_end_of_the_sample_is_still_text() -> None:
    text = ("a" * 8191 + "é").encode()  # the sample ends inside "é"
    assert sniff(text).content_type == "text/plain"


def test_invalid_utf8_early_in_the_sample_is_binary() -> None:
    assert sniff(b"abc\xff\xfedef" + b"x" * 100).content_type == OCTET_STREAM


@given(st.binary(min_size=1, max_size=64))
def test_sniff_never_fails_and_always_names_a_type(head: bytes) -> None:
    result = sniff(head)
    assert "/" in result.content_type


PNG = sniff(b"\x89PNG\r\n\x1a\n")
TEXT = sniff(b"a,b,c\n1,2,3\n")
JSON = sniff(b'{"a": 1}')
BINARY = sniff(b"\x00\x01\x02\xff")


@pytest.mark.parametrize(
    ("sniffed", "declared", "resolved"),
    [
        (BINARY, "image/png", OCTET_STREAM),  # claims a magic the bytes do not have
        (BINARY, "application/zip", OCTET_STREAM),
        (BINARY, "text/plain", OCTET_STREAM),  # binary is not text
        (BINARY, "application/x-custom", "application/x-custom"),  # bytes cannot tell
        (BINARY, None, OCTET_STREAM),
        (TEXT, "text/csv", "text/csv"),
        (TEXT, "text/csv; charset=utf-8", "text/csv"),
        (TEXT, "application/x-ndjson", "application/x-ndjson"),
        (TEXT, "image/png", "text/plain"),  # text is not a png
        (TEXT, "application/octet-stream", "text/plain"),
        (TEXT, None, "text/plain"),
        (TEXT, "", "text/plain"),
        (TEXT, "nonsense", "text/plain"),
        (JSON, "application/json", "application/json"),
        (JSON, "text/plain", "text/plain"),
        (PNG, "image/jpeg", "image/png"),  # the bytes win over the claim
        (PNG, "application/octet-stream", "image/png"),
        (PNG, "IMAGE/PNG", "image/png"),
    ],
)
def test_resolve_content_type(sniffed: Sniffed, declared: str | None, resolved: str) -> None:
    assert resolve_content_type(sniffed, declared) == resolved


MAGIC_TYPES = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "application/zip",
    "application/gzip",
    "application/zstd",
    "application/pdf",
    "application/x-executable",
]


@given(head=st.binary(max_size=64), declared=st.sampled_from(MAGIC_TYPES))
def test_claiming_a_type_with_a_signature_never_overrides_the_bytes(
    head: bytes, declared: str
) -> None:
    sniffed = sniff(head)
    assert resolve_content_type(sniffed, declared) == sniffed.content_type


def test_an_overlong_declared_type_is_ignored() -> None:
    assert resolve_content_type(BINARY, "application/" + "x" * 200) == OCTET_STREAM


@pytest.mark.parametrize(
    ("content_type", "allowed", "ok"),
    [
        ("image/png", [], True),
        ("image/png", ["image/png"], True),
        ("image/png", ["image/jpeg"], False),
        ("image/png", ["image/*"], True),
        ("image/png", ["text/*", "application/pdf"], False),
        ("text/csv", ["text/*"], True),
        ("application/zip", ["*/*"], True),
        ("application/zip", ["application/zip-compressed"], False),
        ("imagex/png", ["image/*"], False),
    ],
)
def test_content_type_allowed(content_type: str, allowed: list[str], ok: bool) -> None:
    assert content_type_allowed(content_type, allowed) is ok
