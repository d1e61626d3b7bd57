"""The plan of an upload, and its result. Pure: what the request and the first bytes of
the body say, turned into decisions (content type, allow-list, codec, the name the SE
gets, exact size), with no I/O and no mutation of the request."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from anyascii import anyascii

from ingester_gateway import errors
from ingester_gateway.auth.verify import Principal
from ingester_gateway.models import CodecName, UploadOptions, UploadResult, iso_utc
from ingester_gateway.pipeline.codecs import EXTENSIONS, MEDIA_TYPES
from ingester_gateway.pipeline.sniff import (
    PROBE_BYTES,
    Sniffed,
    content_type_allowed,
    incompressible,
    resolve_content_type,
    sniff,
)
from ingester_gateway.upstream.wire import StoredFile

SNIFF_BYTES = 8192
# The first block is cut early: enough to classify the data, and the SE request (and
# the SE's first byte) need not wait for a whole block from a slow client.
FIRST_BLOCK_BYTES = 64 * 1024
# Smaller than this, a zstd stream is not worth spreading over several cores.
PARALLEL_MIN_BYTES = 8 * 2**20


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """What is known of an upload before its body: who, what, and how big."""

    upload_id: str
    request_id: str
    principal: Principal
    filename: str  # already checked (check_filename)
    declared_content_type: str | None
    options: UploadOptions
    expected_size: int | None = None  # an upper bound: what is reserved on the node
    exact_size: int | None = None  # the file's size, when the request says it exactly
    claimed_sha256: bytes | None = None
    client_address: str | None = None  # the uploader's IP (a trusted proxy's word on it)
    # A copy of a stored file (finalize): its id is kept, it goes only to nodes of the
    # policy's mode other than `exclude_nodes`, and the original is known already.
    file_id: str | None = None
    strict_mode: bool = False
    exclude_nodes: tuple[str, ...] = ()
    original: tuple[int, str] | None = None  # the original's size and sha256


@dataclass(frozen=True, slots=True)
class PlanRules:
    """The gateway's settings that plans follow."""

    default_codec: CodecName
    allowed_content_types: Sequence[str] = ()
    compression_min_bytes: int = 0  # smaller bodies are stored as they are
    default_ttl_days: int = 30  # for temporary files whose client named no TTL
    refuse_empty: bool = False  # artStore's registry holds no 0-byte file


@dataclass(frozen=True, slots=True)
class UploadPlan:
    content_type: str
    codec: CodecName
    storage_name: str  # the safe ASCII name the SE stores, with the codec's extension
    stored_type: str  # the media type of the stored bytes (the codec's, or the content's)
    exact_size: int | None
    reservation: int  # bytes reserved on the chosen node while the upload runs
    whole: bool  # the whole body came with its first block: one request, no streaming
    parallel_worthy: bool  # big enough to spread a zstd stream over several cores
    ttl_days: int | None  # temporary files: the client's TTL, or the default
    recode: bool = True  # False: the bytes are stored as they come (already in `codec`)

    def stored_as_is(self, original_name: str) -> UploadPlan:
        """The same plan with no codec (compression would not have saved anything)."""
        return dataclasses.replace(
            self,
            codec="none",
            storage_name=safe_filename(original_name),
            stored_type=self.content_type,
        )


def plan_upload(request: UploadRequest, first: bytes, ended: bool, rules: PlanRules) -> UploadPlan:
    """Decide how to store an upload from the request and its first block; `ended` says
    the first block was the whole body. Raises 415 for a content type not allowed."""
    head = first[:SNIFF_BYTES]
    sniffed = sniff(head)
    content_type = resolve_content_type(sniffed, request.declared_content_type)
    if not content_type_allowed(content_type, list(rules.allowed_content_types)):
        raise errors.UNSUPPORTED_MEDIA_TYPE(f"content type {content_type} is not accepted")
    exact = len(first) if ended and request.exact_size is None else request.exact_size
    if exact == 0 and rules.refuse_empty:
        raise errors.EMPTY_FILE("artStore's file registry cannot hold an empty file")
    codec = choose_codec(request.options, sniffed, rules.default_codec, first[:PROBE_BYTES])
    if exact is not None and exact < rules.compression_min_bytes and not request.options.compress:
        codec = "none"  # too small for compression to save a disk block
    temporary = request.options.retention_policy == "temporary"
    return UploadPlan(
        content_type=content_type,
        codec=codec,
        storage_name=safe_filename(request.filename) + EXTENSIONS[codec],
        stored_type=MEDIA_TYPES[codec] if codec != "none" else content_type,
        exact_size=exact,
        reservation=request.expected_size or 0,
        whole=ended,
        parallel_worthy=exact is None or exact >= PARALLEL_MIN_BYTES,
        ttl_days=(request.options.ttl_days or rules.default_ttl_days) if temporary else None,
    )


def choose_codec(
    options: UploadOptions,
    sniffed: Sniffed,
    default: CodecName,
    head: bytes = b"",
) -> CodecName:
    """`compress=false` stores as is, `compress=true` compresses whatever it is; left to
    us, data that is already compressed (by its format, or by a trial on its first
    bytes when the client named no algorithm either) is stored as is."""
    if options.compress is False:
        return "none"
    algorithm = options.compression_algorithm or default
    if options.compress is True:
        return (
            "zstd" if algorithm == "none" and options.compression_algorithm is None else algorithm
        )
    if algorithm == "none" or sniffed.compressed:
        return "none"
    if options.compression_algorithm is None and incompressible(head):
        return "none"
    return algorithm


# Refused: control characters (C0, DEL, C1), bidirectional controls (they make a name
# read otherwise than it is: "exe.txt" shown for "txt.exe"), line and paragraph separators.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_REFUSED = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_BIDI}\\u2028\\u2029]")


def check_filename(name: str) -> str:
    """The client's file name as the gateway keeps it (the original: in the answer, the
    registry, the events; the SE gets `safe_filename` of it). Control and bidi characters
    are refused, other invisible format characters removed; only the last path component
    is kept (a name is never passed on as a path); 1 to 1024 characters."""
    if _REFUSED.search(name):
        raise errors.INVALID_FILENAME("filename contains control or bidirectional characters")
    if not name.isascii():
        # The other invisible format characters (Unicode's Cf: zero-width space and
        # joiners, word joiner, byte order mark, soft hyphen, ...) are removed.
        name = "".join(ch for ch in name if unicodedata.category(ch) != "Cf")
    base = name.rpartition("/")[2].rpartition("\\")[2]
    if base in ("", ".", ".."):
        raise errors.INVALID_FILENAME("filename names no file (empty, '.' or '..')")
    if len(base) > 1024:
        raise errors.INVALID_FILENAME("filename must be 1 to 1024 characters")
    return base


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)?")  # already safe


def safe_filename(name: str) -> str:
    """An ASCII basename the SE can store and serve back (the original stays ours)."""
    if len(name) <= 196 and _PLAIN.fullmatch(name):
        return name
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, _, extension = base.rpartition(".")
    if not stem.strip("."):  # ".hidden", "..": no extension to keep apart
        stem, extension = base, ""
    stem = _ascii_word(stem)[:180] or "file"
    extension = _ascii_word(extension)[:16]
    return f"{stem}.{extension}" if extension else stem


def _ascii_word(text: str) -> str:
    """Transliterated, not dropped: "отчёт" is "otchet", "日本語" "RiBenYu"."""
    return _UNSAFE.sub("_", anyascii(text)).strip("._")


@dataclass(frozen=True, slots=True)
class Stored:
    """What the encoder counted, and where the SE put it."""

    file_id: str
    node_id: str
    node_url: str
    storage_filename: str  # the name the SE says it stored
    original_size: int
    original_sha256: str
    stored_size: int
    stored_sha256: str


def upload_result(
    request: UploadRequest, plan: UploadPlan, stored: Stored, now: float
) -> UploadResult:
    """The 201 body of a stored upload."""
    return UploadResult(
        file_id=stored.file_id,
        original_filename=request.filename,
        storage_filename=stored.storage_filename,
        content_type=plan.content_type,
        file_size=stored.original_size,
        stored_size=stored.stored_size,
        compressed=plan.codec != "none",
        compression_algorithm=plan.codec,
        compression_ratio=round(stored.original_size / stored.stored_size, 4)
        if stored.stored_size
        else 1.0,
        checksum=stored.original_sha256,
        stored_checksum=stored.stored_sha256,
        uploaded_at=iso_utc(now),
        storage_element_id=stored.node_id,
        storage_element_url=stored.node_url,
        retention_policy=request.options.retention_policy,
        ttl_expires_at=ttl_expires_at(plan, now),
        ttl_days=plan.ttl_days,
        upload_id=request.upload_id,
    )


def ttl_expires_at(plan: UploadPlan, now: float) -> str | None:
    return iso_utc(now + plan.ttl_days * 86400) if plan.ttl_days else None


def se_fields(
    request: UploadRequest, plan: UploadPlan, file_id: str, now: float
) -> list[tuple[str, str]]:
    """The control fields the SE receives before the file part: those the real
    artStore Ingester sends, and ours."""
    principal = request.principal
    fields = [
        ("file_id", file_id),
        ("description", request.options.description),
        ("version", "1"),
        ("retention_policy", request.options.retention_policy),
        ("uploaded_by", principal.sub),
        ("uploaded_by_id", principal.sub),
        ("uploaded_by_username", principal.name or principal.sub),
        ("content_type", plan.content_type),
        ("compression_algorithm", plan.codec),
    ]
    expires = ttl_expires_at(plan, now)
    if plan.ttl_days is not None and expires is not None:
        fields += [("ttl_days", str(plan.ttl_days)), ("ttl_expires_at", expires)]
    return fields


class SeMetadata(msgspec.Struct):
    """The SE's `metadata` field: the client's own metadata, and what the SE cannot
    know about the original (its name, size and sha256, and the codec)."""

    user_metadata: dict[str, object]
    original_filename: str
    original_size: int
    original_sha256: str
    compression_algorithm: CodecName
    stored_size: int
    stored_sha256: str


def se_closing_fields(
    request: UploadRequest,
    plan: UploadPlan,
    original: tuple[int, str],
    stored: tuple[int, str],
) -> list[tuple[str, str]]:
    """The fields after the file part: only known once all of it was read."""
    (original_size, original_sha256), (stored_size, stored_sha256) = original, stored
    if request.original is not None:  # a copy: what came was the stored bytes
        original_size, original_sha256 = request.original
    metadata = SeMetadata(
        user_metadata=request.options.metadata,
        original_filename=request.filename,
        original_size=original_size,
        original_sha256=original_sha256,
        compression_algorithm=plan.codec,
        stored_size=stored_size,
        stored_sha256=stored_sha256,
    )
    return [
        ("original_size", str(original_size)),
        ("original_checksum", original_sha256),
        ("metadata", _json(metadata)),
    ]


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def stored_as_sent(reply: StoredFile, stored_sha256: str, stored_size: int) -> bool:
    """Did the SE store exactly the bytes that were sent (by its own checksum)?"""
    if reply.checksum.lower() != stored_sha256:
        return False
    return reply.file_size is None or reply.file_size == stored_size
