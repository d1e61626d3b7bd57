"""The plan of an upload (pure): which codec, what name the SE gets, content type,
exact size, the allow-list."""

from __future__ import annotations

import json
import os
import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.auth.verify import Principal
from ingester_gateway.errors import ApiError
from ingester_gateway.models import CodecName, UploadOptions
from ingester_gateway.pipeline.sniff import Sniffed
from ingester_gateway.upload.plan import (
    PlanRules,
    UploadRequest,
    check_filename,
    choose_codec,
    plan_upload,
    safe_filename,
    se_closing_fields,
    se_fields,
)

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
        ("日本語.txt", "RiBenYu.txt"),  # transliterated, not dropped
        ("файл.tar.gz", "fayl.tar.gz"),
        ("отчёт.txt", "otchet.txt"),
        ("日本語", "RiBenYu"),
        ("😀", "grinning"),
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


@pytest.mark.parametrize("name", ["a.txt", "résumé.pdf", "日本語.txt", "x" * 1024, "a b.txt"])
def test_check_filename_keeps_a_valid_name_as_is(name: str) -> None:
    assert check_filename(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 1025,
        "a\nb",
        "a\rb",
        "a\x00b",
        "tab\there",
        "\x7f",
        "c1\x85control",  # NEL, a C1 control
        "\x9bcsi",
        "invoice\u202efdp.exe",  # right-to-left override: shows as "invoiceexe.pdf"
        "a\u2066b\u2069.txt",  # bidi isolates
        "a\u200fb",  # right-to-left mark
        "line\u2028break",
        "..",
        ".",
        "dir/",
        "a\\",
    ],
)
def test_check_filename_refuses_empty_long_control_bidi_or_no_file(name: str) -> None:
    with pytest.raises(ApiError) as info:
        check_filename(name)
    assert (info.value.status, info.value.code) == (400, "invalid_filename")


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("zero\u200bwidth.txt", "zerowidth.txt"),
        ("\ufeffbom.txt", "bom.txt"),
        ("soft\u00adhyphen.txt", "softhyphen.txt"),
        ("join\u200d\u2060er.txt", "joiner.txt"),
    ],
)
def test_check_filename_removes_invisible_format_characters(name: str, kept: str) -> None:
    assert check_filename(name) == kept


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("dir/sub/report.pdf", "report.pdf"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("/abs/path.txt", "path.txt"),
        ("C:\\Users\\x\\notes.txt", "notes.txt"),
    ],
)
def test_check_filename_keeps_only_the_last_path_component(name: str, kept: str) -> None:
    assert check_filename(name) == kept


@given(st.text(max_size=300))
def test_check_filename_never_passes_on_a_path_or_an_invisible_character(name: str) -> None:
    try:
        kept = check_filename(name)
    except ApiError:
        return
    assert "/" not in kept and "\\" not in kept and kept not in (".", "..")
    assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp") for ch in kept)


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


def request(
    filename: str = "report.txt",
    declared: str | None = None,
    options: UploadOptions | None = None,
    expected_size: int | None = None,
    exact_size: int | None = None,
) -> UploadRequest:
    return UploadRequest(
        upload_id="u-1",
        request_id="r-1",
        principal=Principal("alice", "user", "access", None, None, 2**40),
        filename=filename,
        declared_content_type=declared,
        options=options or UploadOptions(),
        expected_size=expected_size,
        exact_size=exact_size,
    )


TEXT = b"2026-12-01 INFO service started on port 8020\n" * 2000
RULES = PlanRules(default_codec="zstd")


def test_a_text_body_is_planned_as_zstd_text_under_a_safe_name() -> None:
    plan = plan_upload(request("отчёт 1.txt"), TEXT, ended=True, rules=RULES)
    assert (plan.content_type, plan.codec) == ("text/plain", "zstd")
    assert plan.storage_name == "otchet_1.txt.zst"
    assert plan.stored_type == "application/zstd"


def test_a_body_that_came_whole_has_an_exact_size_and_goes_in_one_request() -> None:
    plan = plan_upload(request(expected_size=10_000), TEXT[:5000], ended=True, rules=RULES)
    assert (plan.exact_size, plan.whole, plan.reservation) == (5000, True, 10_000)
    assert not plan.parallel_worthy


def test_a_streamed_body_of_unknown_size_is_worth_several_cores() -> None:
    plan = plan_upload(request(), TEXT, ended=False, rules=RULES)
    assert (plan.exact_size, plan.whole, plan.reservation) == (None, False, 0)
    assert plan.parallel_worthy


def test_a_stored_as_is_body_keeps_its_own_type_and_name() -> None:
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
    plan = plan_upload(request("cat.png", declared="text/plain"), png, ended=True, rules=RULES)
    assert (plan.content_type, plan.codec) == ("image/png", "none")
    assert (plan.storage_name, plan.stored_type) == ("cat.png", "image/png")


def test_a_content_type_outside_the_allow_list_is_415() -> None:
    rules = PlanRules(default_codec="zstd", allowed_content_types=("image/*",))
    with pytest.raises(ApiError) as info:
        plan_upload(request(), TEXT, ended=True, rules=rules)
    assert (info.value.status, info.value.code) == (415, "unsupported_media_type")
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    assert plan_upload(request(), png, ended=True, rules=rules).content_type == "image/png"


def test_the_se_is_told_what_the_real_ingester_tells_it() -> None:
    opts = UploadOptions(description="q1", retention_policy="temporary", ttl_days=7)
    req = request(options=opts)
    plan = plan_upload(req, TEXT, ended=True, rules=RULES)
    fields = dict(se_fields(req, plan, "f-1", now=0.0))
    assert fields["file_id"] == "f-1" and fields["description"] == "q1"
    assert (fields["uploaded_by"], fields["uploaded_by_id"]) == ("alice", "alice")
    assert fields["uploaded_by_username"] == "alice"  # no name claim: the sub
    assert fields["retention_policy"] == "temporary" and fields["compression_algorithm"] == "zstd"
    assert (fields["ttl_days"], fields["ttl_expires_at"]) == ("7", "1970-01-08T00:00:00.000Z")
    permanent = plan_upload(request(), TEXT, ended=True, rules=RULES)
    assert "ttl_days" not in dict(se_fields(request(), permanent, "f-1", now=0.0))


def test_a_temporary_file_without_a_ttl_gets_the_default() -> None:
    rules = PlanRules(default_codec="zstd", default_ttl_days=30)
    temporary = request(options=UploadOptions(retention_policy="temporary"))
    assert plan_upload(temporary, TEXT, ended=True, rules=rules).ttl_days == 30
    assert plan_upload(request(), TEXT, ended=True, rules=rules).ttl_days is None


def test_after_the_file_the_se_gets_the_originals_name_size_sha256_and_the_users_metadata() -> None:
    req = request(options=UploadOptions(metadata={"k": [1, "v"]}))
    plan = plan_upload(req, TEXT, ended=True, rules=RULES)
    fields = dict(se_closing_fields(req, plan, (100, "a" * 64), (40, "b" * 64)))
    assert (fields["original_size"], fields["original_checksum"]) == ("100", "a" * 64)
    assert json.loads(fields["metadata"]) == {
        "user_metadata": {"k": [1, "v"]},
        "original_filename": "report.txt",
        "original_size": 100,
        "original_sha256": "a" * 64,
        "compression_algorithm": "zstd",
        "stored_size": 40,
        "stored_sha256": "b" * 64,
    }


@pytest.mark.parametrize(
    ("size", "compress", "codec"),
    [(4095, None, "none"), (4096, None, "zstd"), (10, True, "zstd"), (10, False, "none")],
)
def test_a_body_smaller_than_the_compression_minimum_is_stored_as_is_unless_asked(
    size: int, compress: bool | None, codec: str
) -> None:
    rules = PlanRules(default_codec="zstd", compression_min_bytes=4096)
    req = request(options=UploadOptions(compress=compress))
    assert plan_upload(req, TEXT[:size], ended=True, rules=rules).codec == codec


def test_a_long_plain_name_is_cut_like_any_other() -> None:
    """The SE's and the registry's limits hold for ASCII names too (500 chars there)."""
    safe = safe_filename("a" * 600 + ".bin")
    assert safe == "a" * 180 + ".bin"
