"""What a Storage Element says on the wire (artStore's SE contract), as structs: the
gateway decodes with them and the reference SE encodes with them, so the two cannot
drift apart."""

from __future__ import annotations

import msgspec


class StoredFile(msgspec.Struct):
    """The SE's 201 to `POST /api/v1/files/upload`; `checksum` is the sha256 hex of the
    bytes it stored."""

    file_id: str
    checksum: str
    file_size: int | None = None
    original_filename: str | None = None
    message: str | None = None


class Capacity(msgspec.Struct):
    total: int
    used: int
    available: int
    percent_used: float | None = None


class CapacityReply(msgspec.Struct):
    """`GET /api/v1/capacity`."""

    storage_id: str | None = None
    mode: str | None = None
    capacity: Capacity | None = None
    health: str | None = None


class ElementInfo(msgspec.Struct):
    """`GET /api/v1/info`."""

    element_id: str
    mode: str
    status: str
    priority: int
    capacity_bytes: int
    used_bytes: int
    file_count: int


class DeleteReply(msgspec.Struct):
    """`DELETE /api/v1/gc/{id}` and `DELETE /api/v1/files/{id}`."""

    status: str  # "deleted" | "already_deleted"
    file_id: str


class ErrorReply(msgspec.Struct):
    """An SE error: `{"detail": ...}` (the Python SE) or `{"error": ...}` (the Go SE)."""

    detail: object = None
    error: object = None


stored_file_decoder = msgspec.json.Decoder(StoredFile)
capacity_decoder = msgspec.json.Decoder(CapacityReply)
_error_decoder = msgspec.json.Decoder(ErrorReply)


def describe_error(raw: bytes) -> str:
    """One line from an SE error body, whichever SE wrote it."""
    try:
        body = _error_decoder.decode(raw)
    except msgspec.DecodeError:
        return raw[:200].decode("utf-8", "replace")
    detail = body.detail if body.detail is not None else body.error
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("code") or detail
    elif isinstance(detail, list):  # FastAPI's 422: [{"loc": [...], "msg": ...}, ...]
        detail = "; ".join(_validation_item(item) for item in detail)
    return str(detail)[:300]


def _validation_item(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(part) for part in item.get("loc", []) if part != "body"]
    return f"{'.'.join(loc)}: {item.get('msg', '')}" if loc else str(item.get("msg", item))


class StoredFileInfo(msgspec.Struct, kw_only=True):
    """`GET /api/v1/files/{id}`: what an SE knows of a file it holds (the reference SE
    answers more; only these are relied on)."""

    file_id: str
    file_size: int
    checksum: str  # sha256 hex of the stored bytes
    original_filename: str | None = None
    content_type: str | None = None
    uploaded_by: str | None = None
    retention_policy: str | None = None
    description: str | None = None
    fields: dict[str, str] = msgspec.field(default_factory=dict)  # the upload's form fields


stored_file_info_decoder = msgspec.json.Decoder(StoredFileInfo)
