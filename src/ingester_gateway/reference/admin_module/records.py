"""The file registry's record and its rules: what `POST /api/v1/files` may register
and `PUT /api/v1/files/{id}` may change, as BRIEF's Admin Module contract lists them.

Unlike the real Admin Module, `content_type` and `uploaded_by` are required (its
database refuses null there only after saving the row), and `file_size` 0 is stored.
Pure code: no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ingester_gateway.reference.admin_module.validation import (
    MISSING,
    Rule,
    check_fields,
    value_error,
)

RETENTION_POLICIES = ("temporary", "permanent")


class FileRecord(msgspec.Struct):
    """One registered file. The fields, in this order, are also the `metadata` of a
    `file-events` entry, which the Query Module indexes."""

    file_id: str
    original_filename: str
    storage_filename: str
    file_size: int
    checksum_sha256: str
    content_type: str
    description: str | None
    storage_element_id: str
    storage_path: str
    compressed: bool
    compression_algorithm: str | None
    original_size: int | None
    uploaded_by: str
    upload_source_ip: str | None
    created_at: str
    updated_at: str
    retention_policy: str
    ttl_expires_at: str | None
    ttl_days: int | None
    user_metadata: dict[str, Any] | None
    tags: list[str]


class DeletedFile(msgspec.Struct):
    """The answer to `DELETE /api/v1/files/{id}` (a soft delete, as artStore does)."""

    file_id: str
    deleted_at: str
    deletion_reason: str
    message: str = "File marked as deleted successfully"


class FilePage(msgspec.Struct):
    """`GET /api/v1/files?limit=&offset=`, oldest registration first."""

    files: list[FileRecord]
    total: int
    limit: int
    offset: int


_TTL_DAYS = Rule("int", ge=1, le=365)

REGISTER_RULES: dict[str, Rule] = {
    "file_id": Rule("uuid", required=True, nullable=False),
    "original_filename": Rule("str", True, False, min_length=1, max_length=500),
    "storage_filename": Rule("str", True, False, min_length=1, max_length=500),
    "file_size": Rule("int", True, False, ge=0),
    "checksum_sha256": Rule("str", True, False, min_length=64, max_length=64, hex_only=True),
    "content_type": Rule("str", True, False, min_length=1, max_length=255),
    "description": Rule("str", max_length=1000),
    "retention_policy": Rule("choice", True, False, choices=RETENTION_POLICIES),
    "ttl_expires_at": Rule("datetime"),
    "ttl_days": _TTL_DAYS,
    "storage_element_id": Rule("str", True, False, min_length=1, max_length=255),
    "storage_path": Rule("str", True, False, min_length=1, max_length=1000),
    "compressed": Rule("bool", nullable=False),
    "compression_algorithm": Rule("str", max_length=20),
    "original_size": Rule("int", ge=0),
    "uploaded_by": Rule("str", True, False, min_length=1, max_length=100),
    "upload_source_ip": Rule("str", max_length=45),
    "user_metadata": Rule("object"),
    "tags": Rule("str_list"),
}

# What an update may change (finalize: a new SE, path and name, `permanent`, TTL cleared
# by sending null); other fields of the body are ignored, as pydantic ignores them.
UPDATE_RULES: dict[str, Rule] = {
    "storage_element_id": REGISTER_RULES["storage_element_id"],
    "storage_path": REGISTER_RULES["storage_path"],
    "storage_filename": REGISTER_RULES["storage_filename"],
    "retention_policy": REGISTER_RULES["retention_policy"],
    "ttl_days": _TTL_DAYS,
    "ttl_expires_at": REGISTER_RULES["ttl_expires_at"],
    "description": REGISTER_RULES["description"],
    "user_metadata": REGISTER_RULES["user_metadata"],
    "tags": REGISTER_RULES["tags"],
}


def registration(body: dict[str, Any], now: str) -> FileRecord:
    """The record a registration body describes, stamped `now`; raises ValidationFailed."""
    values = check_fields(body, REGISTER_RULES)
    present = {k: v for k, v in values.items() if v is not MISSING}
    record = FileRecord(
        file_id=present["file_id"],
        original_filename=present["original_filename"],
        storage_filename=present["storage_filename"],
        file_size=present["file_size"],
        checksum_sha256=present["checksum_sha256"],
        content_type=present["content_type"],
        description=present.get("description"),
        storage_element_id=present["storage_element_id"],
        storage_path=present["storage_path"],
        compressed=present.get("compressed", False),
        compression_algorithm=present.get("compression_algorithm"),
        original_size=present.get("original_size"),
        uploaded_by=present["uploaded_by"],
        upload_source_ip=present.get("upload_source_ip"),
        created_at=now,
        updated_at=now,
        retention_policy=present["retention_policy"],
        ttl_expires_at=present.get("ttl_expires_at"),
        ttl_days=present.get("ttl_days"),
        user_metadata=present.get("user_metadata"),
        tags=present.get("tags") or [],
    )
    check_retention(record, body)
    return record


def updated(record: FileRecord, body: dict[str, Any], now: str) -> FileRecord:
    """`record` with the fields `body` carries (null clears a nullable one), stamped
    `now`; the retention rule holds for the result. Raises ValidationFailed."""
    values = check_fields(body, UPDATE_RULES, partial=True)
    changes = {k: v for k, v in values.items() if v is not MISSING}
    if "tags" in changes and changes["tags"] is None:
        changes["tags"] = []
    result = msgspec.structs.replace(record, **changes, updated_at=now)
    check_retention(result, body)
    return result


def check_retention(record: FileRecord, body: dict[str, Any]) -> None:
    """`temporary` needs both `ttl_days` and `ttl_expires_at`; `permanent` takes neither."""
    has_days = record.ttl_days is not None
    has_expiry = record.ttl_expires_at is not None
    if record.retention_policy == "temporary" and not (has_days and has_expiry):
        raise value_error(
            "ttl_expires_at and ttl_days are required for temporary files", ["body"], body
        )
    if record.retention_policy == "permanent" and (has_days or has_expiry):
        raise value_error(
            "ttl_expires_at and ttl_days must be None for permanent files", ["body"], body
        )
