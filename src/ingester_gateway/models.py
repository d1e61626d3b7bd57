"""The data model at the edges: upload options in, results and progress out."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

import msgspec

from ingester_gateway.errors import INVALID_PARAMETER, without_values

# The one spelling of each name the gateway, its reference servers and its CLI share.
RetentionPolicy = Literal["temporary", "permanent"]
CodecName = Literal["zstd", "brotli", "gzip", "none"]
NodeMode = Literal["edit", "rw", "ro", "ar"]  # an SE's mode: edit and rw take uploads
Role = Literal["super_admin", "admin", "operator", "user", "readonly", "auditor"]
UploadState = Literal["receiving", "storing", "stored", "failed"]
Registration = Literal["registered", "pending", "not_configured"]

CODEC_NAMES: tuple[CodecName, ...] = get_args(CodecName)
NODE_MODES: tuple[NodeMode, ...] = get_args(NodeMode)
WRITABLE_MODES: frozenset[str] = frozenset({"edit", "rw"})
ROLES: tuple[Role, ...] = get_args(Role)
DEFAULT_UPLOAD_ROLES: tuple[Role, ...] = ("super_admin", "admin", "operator", "user")
RETENTION_BY_MODE: dict[str, RetentionPolicy] = {"edit": "temporary", "rw": "permanent"}
MODE_BY_RETENTION: dict[RetentionPolicy, NodeMode] = {"temporary": "edit", "permanent": "rw"}

MAX_METADATA_BYTES = 16 * 1024  # characters of its JSON text
MAX_METADATA_DEPTH = 10  # nested objects and arrays, the metadata object itself included
MAX_TTL_DAYS = 365
# The gateway's own facts in artStore's user_metadata (admin/wire.py): not the client's.
RESERVED_METADATA_KEY = "_ingester"
MAX_DESCRIPTION_CHARS = 1000  # what artStore's registry keeps


class UploadOptions(msgspec.Struct, kw_only=True):
    """Options of one upload, from query parameters (PUT) or form fields (multipart)."""

    description: Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION_CHARS)] = ""
    retention_policy: RetentionPolicy = "permanent"
    # artStore's Admin Module keeps temporary files 1 to 365 days.
    ttl_days: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL_DAYS)] | None = None
    compress: bool | None = None  # None: compress unless the data is already compressed
    compression_algorithm: CodecName | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


_OPTION_NAMES = frozenset(UploadOptions.__struct_fields__) | {"storage_mode"}
_metadata_decoder = msgspec.json.Decoder(dict[str, Any])
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_INNERMOST = re.compile(r"\{[^{}\[\]]*\}|\[[^{}\[\]]*\]")


def json_nesting_within(text: str | bytes, limit: int) -> bool:
    """Whether JSON text nests objects and arrays at most `limit` deep, judged before it
    is decoded (a decoder recurses once per level: thousands of levels are a
    RecursionError, not a 400). Strings are set aside, then the innermost containers
    are removed a level at a time: regex passes, at most `limit` of them."""
    rest = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    rest = _JSON_STRING.sub('""', rest)
    for _ in range(limit):
        rest, removed = _INNERMOST.subn("0", rest)
        if not removed:
            return True
    return "{" not in rest and "[" not in rest


_second: list[object] = [None, ""]  # the last second formatted, and its text


def iso_utc(timestamp: float) -> str:
    """`2026-11-22T10:00:00.123Z` for a unix time (the seconds part is formatted once
    per second: a few of these are made for every upload)."""
    second = int(timestamp)
    if _second[0] != second:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int(timestamp * 1000) % 1000:03d}Z"


def parse_upload_options(fields: Mapping[str, str]) -> UploadOptions:
    """Decode string fields into options; a bad value is a 400 that names the field."""
    raw: dict[str, Any] = {k: v for k, v in fields.items() if k in _OPTION_NAMES}
    mode = raw.pop("storage_mode", None)
    if mode is not None:
        if mode not in RETENTION_BY_MODE:
            raise INVALID_PARAMETER("storage_mode must be 'edit' or 'rw'")
        alias = RETENTION_BY_MODE[mode]
        if raw.get("retention_policy", alias) != alias:
            raise INVALID_PARAMETER("storage_mode and retention_policy disagree")
        raw["retention_policy"] = alias
    metadata = raw.pop("metadata", None)
    if metadata is not None and metadata != "":
        if len(metadata) > MAX_METADATA_BYTES:
            raise INVALID_PARAMETER(f"metadata is longer than {MAX_METADATA_BYTES} characters")
        if not json_nesting_within(metadata, MAX_METADATA_DEPTH):
            raise INVALID_PARAMETER(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
        try:
            raw["metadata"] = _metadata_decoder.decode(metadata)
        except msgspec.DecodeError:
            raise INVALID_PARAMETER("metadata must be a JSON object") from None
        if RESERVED_METADATA_KEY in raw["metadata"]:
            raise INVALID_PARAMETER(f"metadata key {RESERVED_METADATA_KEY!r} is reserved")
    for name in ("ttl_days", "compress", "compression_algorithm"):
        if raw.get(name) == "":
            del raw[name]
    try:
        options = msgspec.convert(raw, UploadOptions, strict=False)
    except msgspec.ValidationError as exc:
        raise INVALID_PARAMETER(_describe(exc)) from None
    if options.ttl_days is not None and options.retention_policy != "temporary":
        raise INVALID_PARAMETER("ttl_days applies only to retention_policy=temporary")
    return options


def _describe(exc: msgspec.ValidationError) -> str:
    message, _, path = without_values(str(exc)).partition(" - at `$.")
    field = path.rstrip("`").split("[")[0] or "options"
    return f"{field}: {message[0].lower()}{message[1:]}"


class UploadResult(msgspec.Struct):
    """The 201 body of a finished upload."""

    file_id: str
    original_filename: str
    storage_filename: str
    content_type: str
    file_size: int
    stored_size: int
    compressed: bool
    compression_algorithm: CodecName
    compression_ratio: float
    checksum: str
    stored_checksum: str
    uploaded_at: str
    storage_element_id: str
    storage_element_url: str
    retention_policy: RetentionPolicy
    ttl_expires_at: str | None
    upload_id: str
    ttl_days: int | None = None
    # In artStore's file registry: "registered", "pending" (durably on its way), or
    # "not_configured" (no Admin Module; the gateway announced the file itself).
    registration: Registration = "not_configured"


class UploadProgress(msgspec.Struct):
    """State of one upload, readable while it runs (`GET /api/v1/uploads/{id}`)."""

    upload_id: str
    state: UploadState
    filename: str
    bytes_received: int = 0
    bytes_sent: int = 0
    expected_bytes: int | None = None
    storage_element_id: str | None = None
    file_id: str | None = None
    error: str | None = None
    started_at: str = ""
    finished_at: str | None = None
    registration: Registration | None = None
