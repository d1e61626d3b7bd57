"""The plan of an upload (pure): which codec, what name the SE gets, content type,
exact size, the allow-list."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.errors import ApiError
from ingester_gateway.models import CodecName, UploadOptions
from ingester_gateway.pipeline.sniff import Sniffed
from ingester_gateway.upload.plan import check_filename, choose_codec, safe_filename

PLAIN = Sniffed("text/plain", compressed=False)
PACKED = Sniffed("application/zip", compressed=True)


def options(compress: bool | None = None, algorithm: CodecName | None = None) -> UploadOptions:
    return UploadOptions(compress=compress, compression_algorithm=algorithm)


@pytest.mark.parametrize(
    ("opts", "sniffed", "default", "codec"),
    [
        # compress=false: never compress, whatever else was asked
        (options(False), PLAIN, "zstd", "none"),
        (options(False, "brotli"), PLAIN, "zstd", "none"),
        # default: the server's codec, skipped on already-compressed data
        (options(), PLAIN, "zstd", "zstd"),
        (options(), PLAIN, "gzip", "gzip"),
        (options(), PACKED, "zstd", "none"),
        (options(), PLAIN, "none", "none"),
        # an explicit algorithm, still skipped on already-compressed data
        (options(None, "brotli"), PLAIN, "zstd", "brotli"),
        (options(None, "gzip"), PACKED, "zstd", "none"),
        (options(None, "none"), PLAIN, "zstd", "none"),
        # compress=true forces compression, even on compressed data
        (options(True), PACKED, "zstd", "zstd"),
        (options(True, "brotli"), PACKED, "zstd", "brotli"),
        (options(True), PLAIN, "gzip", "gzip"),
        (options(True), PACKED, "none", "zstd"),  # forced, though the server default is none
        (options(True, "none"), PLAIN, "zstd", "none"),  # the explicit algorithm wins
    ],
)
def test_choose_codec(
    opts: UploadOptions, sniffed: Sniffed, default: CodecName, codec: CodecName
) -> None:
    assert choose_codec(opts, sniffed, default) == codec


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("dir/sub\\file.txt", "file.txt"),
        ("résumé.pdf", "resume.pdf"),
        ("my file (1).txt", "my_file_1.txt"),
        ("日本語.txt", "file.txt"),
        ("файл.tar.gz", "tar.gz"),
        ("日本語", "file"),
        ("", "file"),
        ("..", "file"),
        ("../", "file"),
        (".hidden", "hidden"),
        ("a\x00b", "a_b"),
    ],
)
def test_safe_filename(name: str, safe: str) -> None:
    assert safe_filename(name) == safe


@given(st.text(max_size=400))
def test_safe_filename_is_always_a_plain_ascii_basename(name: str) -> None:
    safe = safe_filename(name)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,200}", safe)
    assert not safe.startswith(".")
    assert safe not in (".", "..")


@pytest.mark.parametrize("name", ["a.txt", "résumé.pdf", "日本語.txt", "../x", "x" * 1024])
def test_check_filename_keeps_a_valid_name_as_is(name: str) -> None:
    assert check_filename(name) == name


@pytest.mark.parametrize("name", ["", "x" * 1025, "a\nb", "a\rb", "a\x00b", "tab\there", "\x7f"])
def test_check_filename_refuses_empty_long_or_control_characters(name: str) -> None:
    with pytest.raises(ApiError) as info:
        check_filename(name)
    assert (info.value.status, info.value.code) == (400, "invalid_filename")


def test_incompressible_data_is_stored_as_is_when_the_client_left_it_to_us() -> None:
    random_head = os.urandom(64 * 1024)
    text_head = b"a fairly repetitive log line\n" * 3000
    octets = Sniffed("application/octet-stream", False)
    left_to_us = UploadOptions()
    assert choose_codec(left_to_us, octets, "zstd", random_head) == "none"
    assert choose_codec(left_to_us, octets, "zstd", text_head) == "zstd"
    # A client that names an algorithm, or forces compression, gets it regardless.
    named = UploadOptions(compression_algorithm="gzip")
    assert choose_codec(named, octets, "zstd", random_head) == "gzip"
    forced = UploadOptions(compress=True)
    assert choose_codec(forced, octets, "zstd", random_head) == "zstd"
    # Too little to judge: compress as usual.
    assert choose_codec(left_to_us, octets, "zstd", random_head[:100]) == "zstd"
