"""Making every stored file known to artStore (the upload's last saga step).

With an Admin Module (`INGESTER_ADMIN_URL`) the file is registered in its file
registry, which then announces `file:created` itself. Without one, the gateway
announces `file:created` on `file-events` in the same format. Either is tried at
once; when the other side cannot be reached the work goes to the outbox (durable) and
the upload is answered with its registration pending. A registration the Admin
refuses (a 4xx) fails the upload, whose copy is then removed: no file stays on an SE
unknown to artStore and unrecorded.

The registry record describes the stored object: `file_size` and `checksum_sha256`
are those of the bytes the SE holds (what it serves, and what artStore checks against
it); `original_size`, `compressed` and `compression_algorithm` say how to get the
original back, and the original's sha256 is kept in `user_metadata` under the
reserved key `_ingester`, beside the client's own keys, which are never changed.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ingester_gateway.admin.client import AdminClient, AdminRefused, AdminUnavailable
from ingester_gateway.admin.wire import (
    GATEWAY_METADATA_KEY,
    MAX_DESCRIPTION,
    MAX_ORIGINAL_FILENAME,
    MAX_SOURCE_IP,
    MAX_UPLOADED_BY,
    FileRecord,
    FileRegistration,
    created_event,
    record_of,
    registration_of_record,
)
from ingester_gateway.models import UploadResult, iso_utc
from ingester_gateway.observability import get_logger
from ingester_gateway.outbox.events import FileAnnouncer
from ingester_gateway.outbox.jobs import AnnounceFile, RegisterFile, new_job_id
from ingester_gateway.outbox.queue import Outbox, OutboxUnavailable
from ingester_gateway.registry import NodeRecord
from ingester_gateway.runtime.redis_io import REDIS_ERRORS
from ingester_gateway.tracing import NO_TRACING, Tracing
from ingester_gateway.upload.plan import UploadRequest
from ingester_gateway.upload.ports import RecordRefused, RecordState, RecordUnavailable

_log = get_logger("ingester_gateway.outbox.records")


def registration_of(result: UploadResult, request: UploadRequest) -> FileRegistration:
    """What the Admin's registry is told of a stored upload (pure)."""
    original_name = result.original_filename
    facts: dict[str, object] = {
        "original_sha256": result.checksum,
        "original_size": result.file_size,
        "stored_sha256": result.stored_checksum,
        "stored_size": result.stored_size,
    }
    if len(original_name) > MAX_ORIGINAL_FILENAME:
        facts["original_filename"] = original_name  # the record keeps what fits
        original_name = _shorten(original_name, MAX_ORIGINAL_FILENAME)
    temporary = result.retention_policy == "temporary"
    return FileRegistration(
        file_id=result.file_id,
        original_filename=original_name,
        storage_filename=result.storage_filename,
        file_size=result.stored_size,
        checksum_sha256=result.stored_checksum,
        content_type=result.content_type[:255],
        description=request.options.description[:MAX_DESCRIPTION] or None,
        retention_policy=result.retention_policy,
        ttl_days=result.ttl_days if temporary else None,
        ttl_expires_at=result.ttl_expires_at if temporary else None,
        storage_element_id=result.storage_element_id,
        storage_path=f"/files/{result.file_id}",
        compressed=result.compressed,
        compression_algorithm=result.compression_algorithm if result.compressed else None,
        original_size=result.file_size,
        uploaded_by=request.principal.sub[:MAX_UPLOADED_BY],
        upload_source_ip=(request.client_address or "")[:MAX_SOURCE_IP] or None,
        user_metadata={**request.options.metadata, GATEWAY_METADATA_KEY: facts},
    )


def _shorten(name: str, limit: int) -> str:
    """`name` cut to `limit` characters, keeping a short extension."""
    stem, dot, extension = name.rpartition(".")
    if dot and stem and len(extension) <= 16:
        return stem[: limit - len(extension) - 1] + "." + extension
    return name[:limit]


class FileRecorder:
    """The upload driver's record sink, and the outbox's handler of the jobs it
    leaves behind (registrations, announcements)."""

    def __init__(
        self,
        outbox: Outbox,
        admin: AdminClient | None,
        announcer: FileAnnouncer | None,
        clock: Callable[[], float],
        registered: Callable[[str], None] = lambda file_id: None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._outbox = outbox
        self._tracing = tracing
        self._admin = admin
        self._announcer = announcer
        self._clock = clock
        self._registered = registered  # told of each file registered later, by file id
        outbox.handle(RegisterFile, self.register_job)
        outbox.handle(AnnounceFile, self.announce_job)

    @property
    def registers(self) -> bool:
        return self._admin is not None

    async def is_registered(self, file_id: str) -> bool:
        """Does the Admin's registry hold the file now (False when it cannot say)?"""
        if self._admin is None:
            return False
        try:
            return await self._admin.get(file_id) is not None
        except (AdminUnavailable, AdminRefused):
            return False

    async def stored(self, result: UploadResult, request: UploadRequest) -> RecordState:
        registration = registration_of(result, request)
        if self._admin is not None:
            return await self._register(registration, request, result)
        if self._announcer is not None:
            await self._announce(registration)
        return "not_configured"

    async def _register(
        self, registration: FileRegistration, request: UploadRequest, result: UploadResult
    ) -> RecordState:
        assert self._admin is not None
        with self._tracing.span(
            "upload.register", {"ingester.file_id": result.file_id}, kind="client"
        ) as span:
            try:
                await self._admin.register(registration)
                span.set("ingester.registration", "registered")
                return "registered"
            except AdminRefused as exc:
                span.fail(str(exc))
                raise RecordRefused(str(exc)) from None
            except AdminUnavailable as exc:
                span.set("ingester.registration", "pending")
                _log.warning("registration_deferred", file_id=result.file_id, error=str(exc))
        job = RegisterFile(
            id=new_job_id(),
            registration=registration,
            node_id=result.storage_element_id,
            node_url=result.storage_element_url,
            created_at=self._clock(),
            upload_id=request.upload_id,
        )
        try:
            await self._outbox.add(job)
        except OutboxUnavailable as exc:
            raise RecordUnavailable(str(exc)) from None
        return "pending"

    async def _announce(self, registration: FileRegistration) -> None:
        assert self._announcer is not None
        now = iso_utc(self._clock())
        event = created_event(record_of(registration, now), now)
        with self._tracing.span("upload.announce", {"ingester.file_id": registration.file_id}):
            try:
                await self._announcer.announce(event)
                return
            except REDIS_ERRORS:
                pass
        try:
            await self._outbox.add(
                AnnounceFile(id=new_job_id(), event=event, created_at=self._clock())
            )
        except OutboxUnavailable as exc:
            raise RecordUnavailable(str(exc)) from None

    # -- the outbox's handlers ----------------------------------------------------

    async def register_job(self, job: RegisterFile) -> bool:
        if self._admin is None:
            _log.error("registration_without_admin", file_id=job.registration.file_id)
            return False  # kept until an Admin Module is configured again
        try:
            outcome = await self._admin.register(job.registration)
        except AdminUnavailable:
            return False
        except AdminRefused as exc:
            # Refused for good, after the client was told 201 (pending): the copy goes,
            # loudly, rather than stay on an SE unknown to artStore.
            _log.critical(
                "registration_refused_copy_removed",
                file_id=job.registration.file_id,
                node=job.node_id,
                upload_id=job.upload_id,
                reason=exc.reason,
            )
            node = NodeRecord(id=job.node_id, url=job.node_url, mode="rw")
            await self._outbox.owe_delete(node, job.registration.file_id, "registration_refused")
            return True
        _log.info("registration_done", file_id=job.registration.file_id, outcome=outcome)
        self._registered(job.registration.file_id)
        return True

    async def announce_job(self, job: AnnounceFile) -> bool:
        if self._announcer is None:
            # An Admin Module is configured now: it announces what it registers.
            if self._admin is None:
                return False  # nowhere to announce it yet: kept
            record = msgspec.json.decode(job.event.metadata, type=FileRecord)
            try:
                await self._admin.register(registration_of_record(record))
            except AdminUnavailable:
                return False
            except AdminRefused as exc:
                _log.critical("registration_refused", file_id=record.file_id, reason=exc.reason)
            return True
        try:
            await self._announcer.announce(job.event)
        except REDIS_ERRORS:
            return False
        return True
