"""`ingester-gateway upload` without a server: its options as tus Upload-Metadata (the
gateway's rules), the local record it resumes from, the meaning it gives each answer,
its retry budget, its pacing, and the byte ranges it reads."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.cli.main import build_parser
from ingester_gateway.cli.upload.command import human_size
from ingester_gateway.cli.upload.options import (
    OptionError,
    UploadChoices,
    guess_filetype,
    metadata_fields,
    upload_metadata,
)
from ingester_gateway.cli.upload.resume import (
    FileIdentity,
    PartRecord,
    ResumeBook,
    ResumeEntry,
    default_state_dir,
)
from ingester_gateway.cli.upload.rules import (
    MAX_RETRY_AFTER,
    Attempts,
    Pacer,
    Verdict,
    concat_final,
    judge,
    layout,
    retry_after,
)
from ingester_gateway.cli.upload.source import FileSource
from ingester_gateway.errors import UNAUTHORIZED, UPLOAD_CHECKSUM_MISMATCH, ApiError, error_body
from ingester_gateway.models import parse_upload_options
from ingester_gateway.resilience import Backoff
from ingester_gateway.resumable.headers import parse_metadata
from tests.kit import FakeClock, collect, run

# -- options -> Upload-Metadata -------------------------------------------------------------


def test_every_option_becomes_the_metadata_field_the_gateway_reads() -> None:
    fields = metadata_fields(
        UploadChoices(
            filename="report.pdf",
            filetype="application/pdf",
            description="Q3",
            retention_policy="temporary",
            ttl_days=30,
            compress=False,
            compression_algorithm="gzip",
            metadata='{"team": "ops"}',
        )
    )
    assert fields == {
        "filename": "report.pdf",
        "filetype": "application/pdf",
        "description": "Q3",
        "retention_policy": "temporary",
        "ttl_days": "30",
        "compress": "false",
        "compression_algorithm": "gzip",
        "metadata": '{"team": "ops"}',
    }
    options = parse_upload_options(parse_metadata(upload_metadata(fields)))  # as the server
    assert options.ttl_days == 30 and options.compress is False
    assert options.metadata == {"team": "ops"}


def test_options_not_given_are_left_to_the_gateway() -> None:
    assert metadata_fields(UploadChoices(filename="a.bin")) == {"filename": "a.bin"}
    assert metadata_fields(UploadChoices(filename="a.bin", compress=True))["compress"] == "true"


def test_a_name_with_a_path_keeps_its_last_component() -> None:
    assert metadata_fields(UploadChoices(filename="../dir/a.txt"))["filename"] == "a.txt"


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        (UploadChoices("a", ttl_days=3), "ttl_days applies only to retention_policy=temporary"),
        (UploadChoices("a", metadata="[1, 2]"), "metadata must be a JSON object"),
        (UploadChoices("a", metadata='{"_ingester": 1}'), "'_ingester' is reserved"),
        (UploadChoices("a", retention_policy="temporary", ttl_days=400), "ttl_days"),
        (UploadChoices(".."), "filename names no file"),
        (UploadChoices("a\x00b"), "control or bidirectional"),
    ],
)
def test_an_option_the_gateway_would_refuse_fails_with_its_message(
    choices: UploadChoices, message: str
) -> None:
    with pytest.raises(OptionError, match=message.replace("(", r"\(")):
        metadata_fields(choices)


def test_the_content_type_is_guessed_from_the_name() -> None:
    assert guess_filetype("notes.txt") == "text/plain"
    assert guess_filetype("no-extension") is None


def test_the_command_line_is_parsed_with_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INGESTER_URL", raising=False)
    args = build_parser().parse_args(["upload", "f.bin", "--no-compress", "--parallel", "4"])
    assert args.url == "http://127.0.0.1:8020"  # `make run`'s gateway
    assert args.compress is False and args.parallel == 4
    assert args.chunk_size == 64 * 2**20
    assert build_parser().parse_args(["upload", "f", "--chunk-size", "8MiB"]).chunk_size == 8 << 20
    for bad in (["--parallel", "0"], ["--parallel", "17"], ["--chunk-size", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["upload", "f", *bad])


def test_check_validates_the_options_without_uploading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"x")
    parser = build_parser()
    args = parser.parse_args(["--check", "upload", str(path), "--token", "t"])
    assert args.func(args) == 0
    bad = parser.parse_args(["upload", str(path), "--token", "t", "--ttl-days", "2"])
    assert bad.func(bad) == 2
    missing = parser.parse_args(["upload", str(tmp_path / "none"), "--token", "t"])
    assert missing.func(missing) == 2
    no_token = argparse.Namespace(**{**vars(args), "token": None})
    assert no_token.func(no_token) == 2
    err = capsys.readouterr().err
    assert "ttl_days applies only" in err and "no such file" in err and "INGESTER_TOKEN" in err


# -- the local record -------------------------------------------------------------------


def identity_of(tmp_path: Path, data: bytes = b"0123456789") -> FileIdentity:
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    return FileIdentity.of(path, "http://gw:8020/")


def entry_of(identity: FileIdentity) -> ResumeEntry:
    return ResumeEntry(
        path=identity.path,
        size=identity.size,
        mtime_ns=identity.mtime_ns,
        gateway=identity.gateway,
        upload_metadata="filename ZmlsZS5iaW4=",
        sha256="0" * 64,
        parts=[PartRecord("http://gw:8020/api/v1/tus/" + "a" * 32, 0, identity.size)],
    )


def test_a_record_is_saved_loaded_and_removed(tmp_path: Path) -> None:
    identity = identity_of(tmp_path)
    book = ResumeBook(tmp_path / "state")
    assert book.load(identity) is None
    entry = entry_of(identity)
    book.save(identity, entry)
    assert book.load(identity) == entry
    assert oct(book.path_of(identity).stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in book.directory.iterdir()] == [book.path_of(identity).name]
    book.remove(identity)
    book.remove(identity)  # already gone: no error
    assert book.load(identity) is None


def test_the_key_is_the_files_path_size_mtime_and_the_gateway(tmp_path: Path) -> None:
    identity = identity_of(tmp_path)
    assert identity.gateway == "http://gw:8020"  # a trailing slash is the same gateway
    others = [
        FileIdentity(identity.path + "x", identity.size, identity.mtime_ns, identity.gateway),
        FileIdentity(identity.path, identity.size + 1, identity.mtime_ns, identity.gateway),
        FileIdentity(identity.path, identity.size, identity.mtime_ns + 1, identity.gateway),
        FileIdentity(identity.path, identity.size, identity.mtime_ns, "http://other:8020"),
    ]
    assert len({identity.key(), *(other.key() for other in others)}) == 5
    os.utime(identity.path, ns=(identity.mtime_ns + 10**9, identity.mtime_ns + 10**9))
    touched = FileIdentity.of(Path(identity.path), identity.gateway)
    assert touched.key() != identity.key()  # a changed file is another upload


def test_an_unreadable_or_foreign_record_is_dropped(tmp_path: Path) -> None:
    identity = identity_of(tmp_path)
    book = ResumeBook(tmp_path / "state")
    book.save(identity, entry_of(identity))
    book.path_of(identity).write_bytes(b"{not json")
    assert book.load(identity) is None
    assert not book.path_of(identity).exists()
    foreign = entry_of(identity)
    foreign.size += 1  # another file's record under this key
    book.save(identity, foreign)
    assert book.load(identity) is None
    assert not book.path_of(identity).exists()


def test_the_record_is_plain_json(tmp_path: Path) -> None:
    identity = identity_of(tmp_path)
    book = ResumeBook(tmp_path / "state")
    book.save(identity, entry_of(identity))
    raw = msgspec.json.decode(book.path_of(identity).read_bytes())
    assert raw["parts"][0]["url"].endswith("a" * 32) and raw["final"] is None


def test_the_state_directory_follows_the_xdg_rules(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_state_dir({}, home) == home / ".local/state/ingester-gateway"
    xdg = {"XDG_STATE_HOME": "/var/state"}
    assert default_state_dir(xdg, home) == Path("/var/state/ingester-gateway")
    relative = {"XDG_STATE_HOME": "rel/state"}  # ignored, as the spec says
    assert default_state_dir(relative, home) == home / ".local/state/ingester-gateway"


# -- the protocol rules -------------------------------------------------------------------


@given(size=st.integers(0, 10**12), parallel=st.integers(1, 16))
def test_parts_cover_the_file_contiguously(size: int, parallel: int) -> None:
    parts = layout(size, parallel)
    assert len(parts) == max(1, min(parallel, size))
    assert parts[0].start == 0 and parts[-1].end == size
    assert all(a.end == b.start for a, b in itertools.pairwise(parts))
    assert max(p.length for p in parts) - min(p.length for p in parts) <= 1


def test_a_final_upload_names_its_parts_in_order() -> None:
    assert concat_final(["http://g/a", "http://g/b"]) == "final;http://g/a http://g/b"


def envelope(error: ApiError) -> bytes:
    return error_body(error, "req-1")


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (201, b"", "ok"),
        (204, b"", "ok"),
        (460, envelope(UPLOAD_CHECKSUM_MISMATCH("bad")), "retry"),  # the chunk is re-sent
        (409, b'{"error":{"code":"offset_mismatch","message":"m","request_id":"r"}}', "retry"),
        (400, b'{"error":{"code":"upload_interrupted","message":"m","request_id":"r"}}', "retry"),
        (423, b"", "retry"),
        (429, b"", "retry"),
        (500, b"", "retry"),
        (502, b"<html>bad gateway</html>", "retry"),
        (503, b"", "retry"),
        (404, b"", "stale"),
        (410, b"", "stale"),
        (401, envelope(UNAUTHORIZED("no valid bearer token")), "fail"),
        (403, b"", "fail"),
        (413, b"", "fail"),
        (400, b'{"error":{"code":"invalid_parameter","message":"m","request_id":"r"}}', "fail"),
    ],
)
def test_each_answer_means_a_next_step(status: int, body: bytes, kind: str) -> None:
    assert judge(status, {}, body, 0.0).kind == kind


def test_a_refusal_reads_as_one_line_with_the_gateways_message() -> None:
    verdict = judge(401, {}, envelope(UNAUTHORIZED("the token expired")), 0.0)
    assert verdict == Verdict("fail", "401 unauthorized: the token expired", None, "unauthorized")
    assert judge(502, {}, b"<html>", 0.0).reason == "HTTP 502"


def test_retry_after_is_read_as_seconds_or_a_date_and_bounded() -> None:
    now = 1_700_000_000.0
    assert retry_after("5", now) == 5.0
    assert retry_after("86400", now) == MAX_RETRY_AFTER
    assert retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now) == pytest.approx(10.0)
    assert retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0  # in the past
    assert retry_after("soon", now) is None and retry_after(None, now) is None
    assert judge(503, {"retry-after": "7"}, b"", now).retry_after == 7.0


def test_the_retry_budget_is_spent_by_failures_and_refilled_by_progress() -> None:
    clock = FakeClock()
    attempts = Attempts(2, window=100.0, clock=clock, rng=random.Random(1))
    retry = Verdict("retry", "503")
    assert attempts.next_delay(retry) is not None
    assert attempts.next_delay(retry) is not None
    assert attempts.next_delay(retry) is None  # 2 retries, then it gives up
    attempts.progressed()
    assert attempts.next_delay(retry) is not None
    assert Attempts(0, clock=clock).next_delay(retry) is None


def test_the_retry_budget_ends_with_its_window_and_honours_retry_after() -> None:
    clock = FakeClock()
    backoff = Backoff(base=1.0, cap=1.0, floor=1.0)
    attempts = Attempts(100, window=30.0, backoff=backoff, clock=clock, rng=random.Random(1))
    assert attempts.next_delay(Verdict("retry", "423", retry_after=5.0)) == 5.0
    clock.advance(26.0)
    assert attempts.next_delay(Verdict("retry", "423", retry_after=5.0)) is None  # past 30 s
    assert attempts.next_delay(Verdict("retry", "reset")) == 1.0


def test_pacing_spreads_blocks_at_the_rate_whoever_sends_them() -> None:
    pacer = Pacer(rate=100.0)
    wait, due = pacer.wait(0.0, now=10.0, size=50)
    assert (wait, due) == (0.0, 10.5)  # the first block goes at once
    wait, due = pacer.wait(due, now=10.1, size=50)  # another part, 0.1 s later
    assert (wait, due) == pytest.approx((0.4, 11.0))
    wait, due = pacer.wait(due, now=20.0, size=100)  # after a pause: no catching up
    assert (wait, due) == (0.0, 21.0)


def test_sizes_read_as_people_write_them() -> None:
    assert human_size(512) == "512 B"
    assert human_size(3.5 * 2**20) == "3.5 MiB"
    assert human_size(2**50) == "1024.0 TiB"


# -- the file's byte ranges ------------------------------------------------------------------


def test_a_range_is_read_in_blocks_and_hashed_without_the_rest(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    source = FileSource(path, block=4096).open()
    told: list[int] = []
    try:
        blocks = run(collect(source.blocks(1000, 9500, told.append)))
        digest = run(source.sha256(1000, 9500))
    finally:
        source.close()
    assert [len(b) for b in blocks] == [4096, 4096, 308] and told == [4096, 4096, 308]
    assert b"".join(blocks) == data[1000:9500]
    assert digest == hashlib.sha256(data[1000:9500]).digest()


def test_a_file_that_shrank_under_the_upload_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    source = FileSource(path).open()
    try:
        with pytest.raises(OSError, match="shrank"):
            run(source.sha256(0, 200))
    finally:
        source.close()


def test_a_paced_source_sends_small_blocks() -> None:
    assert FileSource(Path("f"), rate=256 * 1024).paced_block == 32 * 1024
    assert FileSource(Path("f"), rate=1).paced_block == 16 * 1024
    assert FileSource(Path("f")).paced_block == 1 << 20
