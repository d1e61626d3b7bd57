"""artStore's Admin Module on the wire (BRIEF, "Admin Module contract"): the file
registry's record, what registers and updates one, and the `file-events` entry that
announces it. The gateway encodes with these structs; the reference Admin Module
decodes with them; the Query Module reads the events."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ingester_gateway.models import RESERVED_METADATA_KEY

EventType = Literal["file:created", "file:updated", "file:deleted"]

# What the Query Module can store: longer values make an event it retries forever.
MAX_ORIGINAL_FILENAME = 255
MAX_DESCRIPTION = 1000
MAX_UPLOADED_BY = 100
MAX_SOURCE_IP = 45
# The gateway's own facts in `user_metadata`, beside the client's keys (which it never
# changes): the original's sha256 and size, and the stored bytes' (see README).
GATEWAY_METADATA_KEY = RESERVED_METADATA_KEY


class FileRegistration(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`POST /api/v1/files`: a stored file made known to artStore."""

    file_id: str
    original_filename: str
    storage_filename: str
    file_size: int
    checksum_sha256: str
    content_type: str
    description: str | None = None
    retention_policy: Literal["temporary", "permanent"]
    ttl_expires_at: str | None = None
    ttl_days: int | None = None
    storage_element_id: str
    storage_path: str
    compressed: bool
    compression_algorithm: str | None = None
    original_size: int | None = None
    uploaded_by: str
    upload_source_ip: str | None = None
    user_metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class FileUpdate(msgspec.Struct, kw_only=True):
    """`PUT /api/v1/files/{file_id}` after finalize: a new SE, `permanent`, no TTL (the
    TTL fields are sent as null to clear them)."""

    storage_element_id: str
    storage_path: str
    storage_filename: str
    retention_policy: Literal["temporary", "permanent"]
    ttl_days: int | None = None
    ttl_expires_at: str | None = None


class FileRecord(msgspec.Struct, kw_only=True):
    """A registered file as the registry keeps it; in this field order also the
    `metadata` of a `file-events` entry, which the Query Module indexes."""

    file_id: str
    original_filename: str
    storage_filename: str
    file_size: int
    checksum_sha256: str
    content_type: str
    description: str | None = None
    storage_element_id: str
    storage_path: str
    compressed: bool = False
    compression_algorithm: str | None = None
    original_size: int | None = None
    uploaded_by: str
    upload_source_ip: str | None = None
    created_at: str
    updated_at: str
    retention_policy: str
    ttl_expires_at: str | None = None
    ttl_days: int | None = None
    user_metadata: dict[str, Any] | None = None
    tags: list[str] = msgspec.field(default_factory=list)


class FileEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One `file-events` stream entry; `metadata` is a FileRecord as one JSON string."""

    event_type: EventType
    timestamp: str  # ISO 8601
    file_id: str
    storage_element_id: str
    metadata: str

    def stream_fields(self) -> list[str]:
        """Field/value pairs as XADD takes them."""
        return [
            "event_type",
            self.event_type,
            "timestamp",
            self.timestamp,
            "file_id",
            self.file_id,
            "storage_element_id",
            self.storage_element_id,
            "metadata",
            self.metadata,
        ]


def record_of(registration: FileRegistration, now: str) -> FileRecord:
    """The record a registration makes, stamped `now` (the Admin's doing, or ours when
    there is no Admin Module and the gateway announces the file itself)."""
    fields = msgspec.structs.asdict(registration)
    return FileRecord(**fields, created_at=now, updated_at=now)


def registration_of_record(record: FileRecord) -> FileRegistration:
    """What registers `record` (an announcement waiting when an Admin Module came)."""
    fields = msgspec.structs.asdict(record)
    for stamp in ("created_at", "updated_at", "tags"):
        fields.pop(stamp)
    fields["user_metadata"] = fields["user_metadata"] or {}
    return FileRegistration(**fields)


def created_event(record: FileRecord, timestamp: str) -> FileEvent:
    return FileEvent(
        event_type="file:created",
        timestamp=timestamp,
        file_id=record.file_id,
        storage_element_id=record.storage_element_id,
        metadata=msgspec.json.encode(record).decode(),
    )
