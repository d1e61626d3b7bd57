"""The upload command's driver against an in-memory tus server that answers as scripted
(a checksum mismatch, a lock held elsewhere, a cut connection, a refusal, a failed
store): what it re-sends, how long it waits, what it keeps to resume, what it says."""

from __future__ import annotations

import hashlib
import io
import urllib.parse
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from ingester_gateway.cli.upload.options import upload_metadata
from ingester_gateway.cli.upload.resume import FileIdentity, PartRecord, ResumeBook, ResumeEntry
from ingester_gateway.cli.upload.source import FileSource
from ingester_gateway.cli.upload.transport import Answer, TransportError
from ingester_gateway.cli.upload.uploader import Outcome, Uploader, UploadFailed, UploadPlan
from ingester_gateway.errors import (
    UNAUTHORIZED,
    UPLOAD_CHECKSUM_MISMATCH,
    UPLOAD_LOCKED,
    ApiError,
    error_body,
)
from ingester_gateway.models import UploadResult
from ingester_gateway.resumable.state import ResumableStatus
from tests.kit import run

COLLECTION = "http://gw:8020/api/v1/tus/"
FIELDS = {"filename": "data.bin"}


@dataclass
class Staged:
    length: int
    data: bytearray = field(default_factory=bytearray)
    parts: list[str] = field(default_factory=list)
    metadata: str | None = None
    sha256: bytes | None = None


def refusal(error: ApiError) -> Answer:
    headers = {k.decode(): v.decode() for k, v in error.headers}
    return Answer(error.status, headers, error_body(error, "req"))


class ScriptedTus:
    """A tus server in memory: uploads, offsets, concatenation, a store that succeeds at
    once; `script` answers the next requests of a method instead (an Answer, a
    TransportError to raise, or None: answered as usual)."""

    collection = COLLECTION

    def __init__(self) -> None:
        self.uploads: dict[str, Staged] = {}
        self.script: dict[str, list[Answer | TransportError | None]] = {}
        self.calls: list[tuple[str, str, int]] = []  # method, upload id, offset or length
        self.store_error: str | None = None

    def resolve(self, location: str) -> str:
        return urllib.parse.urljoin(COLLECTION, location)

    def _scripted(self, method: str) -> Answer | None:
        queued = self.script.get(method)
        if not queued:
            return None
        step = queued.pop(0)
        if isinstance(step, TransportError):
            raise step
        return step

    @staticmethod
    def _id(url: str) -> str:
        return url.rpartition("/")[2]

    async def create(
        self,
        length: int,
        upload_metadata: str | None,
        concat: str | None = None,
        sha256: bytes | None = None,
    ) -> Answer:
        self.calls.append(("POST", "", length))
        if (scripted := self._scripted("POST")) is not None:
            return scripted
        upload_id = uuid.uuid4().hex
        staged = Staged(length, metadata=upload_metadata, sha256=sha256)
        if concat is not None and concat.startswith("final;"):
            staged.parts = [self._id(url) for url in concat.removeprefix("final;").split()]
            for part in staged.parts:
                staged.data += self.uploads[part].data
            staged.length = len(staged.data)
        self.uploads[upload_id] = staged
        return Answer(201, {"location": f"/api/v1/tus/{upload_id}"}, b"")

    async def head(self, url: str) -> Answer:
        self.calls.append(("HEAD", self._id(url), 0))
        if (scripted := self._scripted("HEAD")) is not None:
            return scripted
        staged = self.uploads.get(self._id(url))
        if staged is None:
            return Answer(404, {}, b"")
        offset, length = str(len(staged.data)), str(staged.length)
        return Answer(200, {"upload-offset": offset, "upload-length": length}, b"")

    async def patch(
        self, url: str, offset: int, length: int, sha256: bytes, body: AsyncIterable[bytes]
    ) -> Answer:
        self.calls.append(("PATCH", self._id(url), offset))
        data = b"".join([block async for block in body])
        assert len(data) == length
        if (scripted := self._scripted("PATCH")) is not None:
            return scripted
        staged = self.uploads[self._id(url)]
        assert offset == len(staged.data) and hashlib.sha256(data).digest() == sha256
        staged.data += data
        return Answer(204, {"upload-offset": str(len(staged.data))}, b"")

    async def status(self, url: str) -> Answer:
        self.calls.append(("GET", self._id(url), 0))
        staged = self.uploads[self._id(url)]
        checksum = hashlib.sha256(staged.data).hexdigest()
        assert staged.sha256 is None or staged.sha256.hex() == checksum
        result = UploadResult(
            file_id="file-1",
            original_filename="data.bin",
            storage_filename="data.bin",
            content_type="application/octet-stream",
            file_size=len(staged.data),
            stored_size=len(staged.data),
            compressed=False,
            compression_algorithm="none",
            compression_ratio=1.0,
            checksum=checksum,
            stored_checksum=checksum,
            uploaded_at="2026-01-01T00:00:00Z",
            storage_element_id="se-1",
            storage_element_url="http://se:8010",
            retention_policy="permanent",
            ttl_expires_at=None,
            upload_id=self._id(url),
        )
        failed = self.store_error is not None
        status = ResumableStatus(
            upload_id=self._id(url),
            state="failed" if failed else "stored",
            offset=len(staged.data),
            length=staged.length,
            filename="data.bin",
            expires_at="2026-01-01T00:00:00Z",
            error=self.store_error,
            result=None if failed else result,
        )
        return Answer(200, {}, msgspec.json.encode(status))

    async def terminate(self, url: str) -> Answer:
        self.calls.append(("DELETE", self._id(url), 0))
        self.uploads.pop(self._id(url), None)
        return Answer(204, {}, b"")


@dataclass
class Run:
    tus: ScriptedTus
    book: ResumeBook
    identity: FileIdentity
    data: bytes
    said: list[str] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)

    def upload(self, parallel: int = 1, chunk: int = 1000, retries: int = 3) -> Outcome:
        plan = UploadPlan(self.identity, FIELDS, parallel, chunk, retries, store_timeout=5.0)
        source = FileSource(Path(self.identity.path), block=256).open()

        async def sleep(seconds: float) -> None:
            self.slept.append(seconds)

        try:
            uploader = Uploader(
                plan, self.tus, source, self.book, self.said.append, io.StringIO(), sleep
            )
            return run(uploader.run())
        finally:
            source.close()

    def patches(self) -> list[int]:
        return [offset for method, _, offset in self.tus.calls if method == "PATCH"]


@pytest.fixture
def job(tmp_path: Path) -> Run:
    data = bytes(range(256)) * 10 + b"tail"  # 2564 bytes: three chunks of 1000
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return Run(
        ScriptedTus(), ResumeBook(tmp_path / "state"), FileIdentity.of(path, "http://gw:8020"), data
    )


def stored_bytes(job: Run) -> bytes:
    [final] = [s for s in job.tus.uploads.values() if s.metadata is not None]
    return bytes(final.data)


def test_a_file_goes_in_checksummed_chunks_and_the_record_is_gone_after(job: Run) -> None:
    outcome = job.upload()
    assert outcome.result.file_id == "file-1" and outcome.resumed_from == 0
    assert job.patches() == [0, 1000, 2000]
    assert stored_bytes(job) == job.data
    assert job.book.load(job.identity) is None


def test_a_checksum_mismatch_re_sends_that_chunk(job: Run) -> None:
    job.tus.script["PATCH"] = [refusal(UPLOAD_CHECKSUM_MISMATCH("does not match"))]
    job.upload()
    assert job.patches() == [0, 0, 1000, 2000]  # the first chunk again, after a HEAD
    assert stored_bytes(job) == job.data
    assert any("460 upload_checksum_mismatch" in line for line in job.said)


def test_a_locked_upload_waits_at_least_its_retry_after(job: Run) -> None:
    job.tus.script["PATCH"] = [refusal(UPLOAD_LOCKED("held elsewhere"))]
    job.upload()
    assert job.slept[0] >= 5.0  # UPLOAD_LOCKED's Retry-After: 5
    assert stored_bytes(job) == job.data


def test_a_cut_connection_reads_the_offset_again_and_goes_on(job: Run) -> None:
    job.tus.script["PATCH"] = [TransportError("the connection broke")]
    job.tus.script["HEAD"] = [TransportError("cannot reach gw:8020: connection refused")]
    job.upload()
    assert [m for m, _, _ in job.tus.calls[:5]] == ["POST", "PATCH", "HEAD", "HEAD", "PATCH"]
    assert len(job.slept) == 2 and stored_bytes(job) == job.data


def test_the_retry_budget_ends_with_the_gateways_reason(job: Run) -> None:
    job.tus.script["PATCH"] = [Answer(503, {}, b"")] * 10
    with pytest.raises(UploadFailed, match=r"HTTP 503 \(gave up after 3 tries\)"):
        job.upload(retries=2)
    assert job.book.load(job.identity) is not None  # kept: the next run resumes


def test_a_refusal_ends_the_upload_with_the_message_and_keeps_the_record(job: Run) -> None:
    job.tus.script["PATCH"] = [refusal(UNAUTHORIZED("the token expired"))]
    with pytest.raises(UploadFailed, match=r"^401 unauthorized: the token expired$"):
        job.upload()
    assert job.book.load(job.identity) is not None  # a fresh token goes on from here


def test_a_second_run_resumes_from_the_servers_offset(job: Run) -> None:
    job.tus.script["PATCH"] = [None, None, refusal(UNAUTHORIZED("the token expired"))]
    with pytest.raises(UploadFailed):
        job.upload()
    job.tus.calls.clear()
    outcome = job.upload()
    assert outcome.resumed_from == 2000
    assert f"resuming: 2000 of {len(job.data)} bytes are on the server" in job.said
    assert [m for m, _, _ in job.tus.calls][:2] == ["HEAD", "PATCH"] and job.patches() == [2000]
    assert stored_bytes(job) == job.data


def test_a_record_the_server_no_longer_knows_starts_anew(job: Run) -> None:
    job.book.save(
        job.identity,
        ResumeEntry(
            path=job.identity.path,
            size=job.identity.size,
            mtime_ns=job.identity.mtime_ns,
            gateway=job.identity.gateway,
            upload_metadata=upload_metadata(FIELDS),
            sha256=hashlib.sha256(job.data).hexdigest(),
            parts=[PartRecord(COLLECTION + "f" * 32, 0, len(job.data))],
        ),
    )
    job.upload()
    assert "the interrupted upload is no longer on the server: starting anew" in job.said
    assert stored_bytes(job) == job.data


def test_other_options_than_the_records_start_anew_and_drop_the_old_upload(job: Run) -> None:
    old = job.tus.resolve("/api/v1/tus/" + "e" * 32)
    job.tus.uploads["e" * 32] = Staged(len(job.data))
    job.book.save(
        job.identity,
        ResumeEntry(
            path=job.identity.path,
            size=job.identity.size,
            mtime_ns=job.identity.mtime_ns,
            gateway=job.identity.gateway,
            upload_metadata=upload_metadata({"filename": "other.bin"}),
            sha256=hashlib.sha256(job.data).hexdigest(),
            parts=[PartRecord(old, 0, len(job.data))],
        ),
    )
    job.upload()
    assert "the upload options differ from the interrupted run's: starting anew" in job.said
    assert ("DELETE", "e" * 32, 0) in job.tus.calls and "e" * 32 not in job.tus.uploads


def test_parallel_parts_are_sent_then_concatenated_in_order(job: Run) -> None:
    job.upload(parallel=3, chunk=400)
    posts = [length for method, _, length in job.tus.calls if method == "POST"]
    assert posts == [855, 855, 854, len(job.data)]  # three partials, then the final
    assert stored_bytes(job) == job.data
    [final] = [s for s in job.tus.uploads.values() if s.parts]
    assert final.sha256 == hashlib.sha256(job.data).digest()  # Repr-Digest of the whole


def test_a_failed_store_is_reported_and_the_record_dropped(job: Run) -> None:
    job.tus.store_error = "storage_failed: the SE answered 507"
    with pytest.raises(UploadFailed, match="could not store the file: storage_failed"):
        job.upload()
    assert job.book.load(job.identity) is None
