"""One file into artStore over tus, from creation (or the resumed record) to the file id:

    resume?  the record of an earlier run: HEAD each upload for its offset
             (404/410, or other options: start anew)
    create   hash the file, POST one upload (or N partial ones: `--parallel`), record it
    send     PATCH chunk after chunk, each with its sha-256 (parts side by side)
    final    `--parallel`: POST the final upload `Upload-Concat: final;<parts>`
    stored?  GET the upload until the gateway has stored it: the file id, the checksum

A failure another try may not see (a cut connection, 5xx, 423, 429, 460, a stale
offset) reads the offset again and goes on, within a bounded retry budget; any other
is an `UploadFailed` with the gateway's message. The record is removed once the file is
stored, or when the upload can no longer go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

import msgspec

from ingester_gateway.cli.upload.options import upload_metadata
from ingester_gateway.cli.upload.progress import Progress
from ingester_gateway.cli.upload.resume import FileIdentity, PartRecord, ResumeBook, ResumeEntry
from ingester_gateway.cli.upload.rules import Attempts, Verdict, concat_final, judge, layout
from ingester_gateway.cli.upload.source import FileSource
from ingester_gateway.cli.upload.transport import Answer, TransportError, TusTransport
from ingester_gateway.models import UploadResult
from ingester_gateway.resumable.state import ResumableStatus

STATUS_POLL_FIRST = 0.2  # seconds between status reads, growing to...
STATUS_POLL_MAX = 2.0


class UploadFailed(Exception):
    """The upload cannot go on; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class UploadPlan:
    identity: FileIdentity
    fields: dict[str, str]  # Upload-Metadata
    parallel: int
    chunk_size: int
    retries: int
    store_timeout: float


@dataclass(frozen=True, slots=True)
class Outcome:
    result: UploadResult
    resumed_from: int  # bytes the server held when this run began
    sent: int  # bytes this run sent that the server kept
    seconds: float  # sending them took this long


_status_decoder = msgspec.json.Decoder(ResumableStatus)


class Uploader:
    def __init__(
        self,
        plan: UploadPlan,
        transport: TusTransport,
        source: FileSource,
        book: ResumeBook,
        say: Callable[[str], None],
        stream: TextIO,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.plan = plan
        self.transport = transport
        self.source = source
        self.book = book
        self.say = say
        self.stream = stream
        self.sleep = sleep
        self.size = plan.identity.size
        self.confirmed: dict[int, int] = {}  # part -> bytes the server confirmed
        self.resumed_from = 0
        self._progress: Progress | None = None

    @property
    def on_server(self) -> int:
        return sum(self.confirmed.values())

    async def run(self) -> Outcome:
        resumed = await self._resume()
        if resumed is None:
            entry = await self._create()
            offsets = [0] * len(entry.parts)
        else:
            entry, offsets = resumed
        self.confirmed = dict(enumerate(offsets))
        self.resumed_from = self.on_server
        started = time.monotonic()
        if entry.final is None:
            await self._send(entry, offsets)
            if len(entry.parts) > 1:
                entry.final = await self._final(entry)
                self.book.save(self.plan.identity, entry)
        seconds = time.monotonic() - started
        result = await self._stored(entry.final or entry.parts[0].url)
        self.book.remove(self.plan.identity)
        if result.checksum != entry.sha256 or result.file_size != self.size:
            raise UploadFailed(
                f"the gateway stored {result.file_size} bytes with sha256 {result.checksum}, "
                f"not the file's {self.size} bytes with sha256 {entry.sha256}"
            )
        return Outcome(result, self.resumed_from, self.size - self.resumed_from, seconds)

    # -- resuming --------------------------------------------------------------------

    async def _resume(self) -> tuple[ResumeEntry, list[int]] | None:
        identity = self.plan.identity
        entry = self.book.load(identity)
        if entry is None:
            return None
        parts = len(layout(self.size, self.plan.parallel))
        if entry.upload_metadata != upload_metadata(self.plan.fields) or len(entry.parts) != parts:
            self.say("the upload options differ from the interrupted run's: starting anew")
            await self._abandon(entry)
            return None
        attempts = Attempts(self.plan.retries)
        if entry.final is not None:
            if await self._offset(entry.final, self.size, attempts) is None:
                self.say("the interrupted upload is no longer on the server: starting anew")
                self.book.remove(identity)
                return None
            return entry, [part.length for part in entry.parts]
        offsets = []
        for part in entry.parts:
            offset = await self._offset(part.url, part.length, attempts)
            if offset is None:
                self.say("the interrupted upload is no longer on the server: starting anew")
                await self._abandon(entry)
                return None
            offsets.append(offset)
        self.say(f"resuming: {sum(offsets)} of {self.size} bytes are on the server")
        return entry, offsets

    async def _abandon(self, entry: ResumeEntry) -> None:
        """Forget an upload that will not go on, and ask the gateway to drop its bytes
        (once, best effort: it expires anyway)."""
        self.book.remove(self.plan.identity)
        for url in [part.url for part in entry.parts]:
            try:
                await self.transport.terminate(url)
            except TransportError:
                return

    async def _offset(self, url: str, length: int, attempts: Attempts) -> int | None:
        """The upload's offset (HEAD); None when it is gone, or is not this upload."""
        while True:
            verdict, answer = await self._try(self.transport.head(url))
            if verdict.kind == "stale":
                return None
            if answer is not None and verdict.kind == "ok":
                offset = _integer(answer.headers.get("upload-offset"))
                declared = _integer(answer.headers.get("upload-length"))
                if offset is None or declared != length or offset > length:
                    return None
                return offset
            await self._pause(attempts, verdict)

    # -- creating --------------------------------------------------------------------

    async def _create(self) -> ResumeEntry:
        identity = self.plan.identity
        sha256 = await self._hash()
        parts = layout(self.size, self.plan.parallel)
        metadata = upload_metadata(self.plan.fields)
        if len(parts) == 1:
            urls = [await self._post(self.size, metadata, None, sha256)]
        else:
            urls = [await self._post(part.length, None, "partial", None) for part in parts]
        entry = ResumeEntry(
            path=identity.path,
            size=identity.size,
            mtime_ns=identity.mtime_ns,
            gateway=identity.gateway,
            upload_metadata=metadata,
            sha256=sha256.hex(),
            parts=[
                PartRecord(url, part.start, part.length)
                for url, part in zip(urls, parts, strict=True)
            ],
        )
        self.book.save(identity, entry)
        return entry

    async def _hash(self) -> bytes:
        progress = Progress(self.size, "sha256", self.stream)
        try:
            return await self.source.sha256(0, self.size, lambda n: progress.add(0, n))
        finally:
            progress.close()

    async def _post(
        self, length: int, metadata: str | None, concat: str | None, sha256: bytes | None
    ) -> str:
        """A new upload's URL."""
        attempts = Attempts(self.plan.retries)
        while True:
            verdict, answer = await self._try(
                self.transport.create(length, metadata, concat, sha256)
            )
            if answer is not None and verdict.kind == "ok":
                location = answer.headers.get("location")
                if answer.status != 201 or not location:
                    raise UploadFailed(f"the gateway answered {answer.status} without Location")
                return self.transport.resolve(location)
            if verdict.kind == "stale":  # no such route: not a gateway with tus
                raise UploadFailed(f"{self.transport.collection}: {verdict.reason}")
            await self._pause(attempts, verdict)

    async def _final(self, entry: ResumeEntry) -> str:
        """The final upload of the parts (tus concatenation), which is stored."""
        concat = concat_final([part.url for part in entry.parts])
        attempts = Attempts(self.plan.retries)
        while True:
            verdict, answer = await self._try(
                self.transport.create(
                    self.size, entry.upload_metadata, concat, bytes.fromhex(entry.sha256)
                )
            )
            if answer is not None and verdict.kind == "ok":
                location = answer.headers.get("location")
                if not location:
                    raise UploadFailed(f"the gateway answered {answer.status} without Location")
                return self.transport.resolve(location)
            if verdict.code == "partial_unfinished":  # the parts were taken: cannot go on
                self.book.remove(self.plan.identity)
                raise UploadFailed(f"{verdict.reason}; run again to start anew")
            await self._pause(attempts, verdict)

    # -- sending ---------------------------------------------------------------------

    async def _send(self, entry: ResumeEntry, offsets: list[int]) -> None:
        self._progress = Progress(self.size, "upload", self.stream)
        tasks = [
            asyncio.create_task(self._send_part(index, part, offset))
            for index, (part, offset) in enumerate(zip(entry.parts, offsets, strict=True))
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._progress.close()

    def _at(self, index: int, offset: int) -> None:
        self.confirmed[index] = offset
        if self._progress is not None:
            self._progress.at(index, offset)

    async def _send_part(self, index: int, part: PartRecord, offset: int) -> None:
        attempts = Attempts(self.plan.retries)
        known: int | None = offset
        while True:
            if known is None:
                known = await self._offset(part.url, part.length, attempts)
                if known is None:
                    raise self._gone(part.url)
            self._at(index, known)
            if known >= part.length:
                return
            end = min(part.length, known + self.plan.chunk_size)
            verdict, answer = await self._try(self._patch(index, part, known, end))
            if answer is not None and verdict.kind == "ok":
                reached = _integer(answer.headers.get("upload-offset"))
                if reached is None or not known < reached <= part.length:
                    raise UploadFailed(f"the gateway answered a bad Upload-Offset: {reached}")
                known = reached
                attempts.progressed()
                continue
            if verdict.kind == "stale":
                raise self._gone(part.url)
            self._at(index, known)  # the bytes of the failed request are not counted
            await self._pause(attempts, verdict)
            known = None

    async def _patch(self, index: int, part: PartRecord, offset: int, end: int) -> Answer:
        first, last = part.start + offset, part.start + end
        sha256 = await self.source.sha256(first, last)
        progress = self._progress
        assert progress is not None

        def sent(size: int) -> None:
            progress.add(index, size)

        body = self.source.blocks(first, last, sent)
        return await self.transport.patch(part.url, offset, end - offset, sha256, body)

    def _gone(self, url: str) -> UploadFailed:
        self.book.remove(self.plan.identity)
        return UploadFailed(
            f"the upload {url} is no longer on the server (expired or removed); "
            "run again to start anew"
        )

    # -- into artStore ---------------------------------------------------------------

    async def _stored(self, url: str) -> UploadResult:
        """The result once the gateway stored the upload into artStore (its background
        job); GET also hands the gateway this token for a store that waits for one."""
        attempts = Attempts(self.plan.retries)
        deadline = time.monotonic() + self.plan.store_timeout
        pause, told = STATUS_POLL_FIRST, None
        if self.stream.isatty():  # else the command says it all in one line at the end
            self.say("uploaded; waiting for the gateway to store it in artStore")
        while True:
            verdict, answer = await self._try(self.transport.status(url))
            if verdict.kind == "stale":
                raise self._gone(url)
            if answer is None or verdict.kind != "ok":
                await self._pause(attempts, verdict)
                continue
            attempts.progressed()
            try:
                status = _status_decoder.decode(answer.body)
            except msgspec.DecodeError as exc:
                raise UploadFailed(f"the gateway's upload status is unreadable: {exc}") from None
            if status.state == "stored" and status.result is not None:
                return status.result
            if status.state == "failed":
                self.book.remove(self.plan.identity)
                raise UploadFailed(f"the gateway could not store the file: {status.error}")
            if status.error and status.error != told:
                told = status.error
                self.say(f"the gateway retries the store: {status.error}")
            if time.monotonic() >= deadline:
                raise UploadFailed(
                    f"not stored within {self.plan.store_timeout:g} s (state: {status.state}); "
                    "run the same command again to keep waiting"
                )
            await self.sleep(pause)
            pause = min(pause * 1.5, STATUS_POLL_MAX)

    # -- answers and pauses ----------------------------------------------------------

    @staticmethod
    async def _try(call: Awaitable[Answer]) -> tuple[Verdict, Answer | None]:
        try:
            answer = await call
        except TransportError as exc:
            return Verdict("retry", str(exc)), None
        return judge(answer.status, answer.headers, answer.body, time.time()), answer

    async def _pause(self, attempts: Attempts, verdict: Verdict) -> None:
        """Wait before the next try; UploadFailed when the answer is final or the retry
        budget is spent."""
        if verdict.kind != "retry":
            raise UploadFailed(verdict.reason)
        delay = attempts.next_delay(verdict)
        if delay is None:
            tries = "1 try" if attempts.failures == 1 else f"{attempts.failures} tries"
            raise UploadFailed(f"{verdict.reason} (gave up after {tries})")
        self.say(f"{verdict.reason}; trying again in {delay:.1f} s")
        await self.sleep(delay)


def _integer(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None
