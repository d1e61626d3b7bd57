"""Content type from the first bytes of the body, not from the client's word alone."""

from __future__ import annotations

from dataclasses import dataclass

import zstandard

OCTET_STREAM = "application/octet-stream"
TEXT_PLAIN = "text/plain"


@dataclass(frozen=True, slots=True)
class Sniffed:
    content_type: str
    compressed: bool  # already compressed: another pass would only burn CPU


# (offset, magic, content type, already compressed)
_SIGNATURES: tuple[tuple[int, bytes, str, bool], ...] = (
    (0, b"\x1f\x8b", "application/gzip", True),
    (0, b"\x28\xb5\x2f\xfd", "application/zstd", True),
    (0, b"PK\x03\x04", "application/zip", True),
    (0, b"PK\x05\x06", "application/zip", True),
    (0, b"BZh", "application/x-bzip2", True),
    (0, b"\xfd7zXZ\x00", "application/x-xz", True),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed", True),
    (0, b"Rar!\x1a\x07", "application/vnd.rar", True),
    (0, b"\x04\x22\x4d\x18", "application/x-lz4", True),
    (0, b"\x89PNG\r\n\x1a\n", "image/png", True),
    (0, b"\xff\xd8\xff", "image/jpeg", True),
    (0, b"GIF87a", "image/gif", True),
    (0, b"GIF89a", "image/gif", True),
    (0, b"\x1aE\xdf\xa3", "video/x-matroska", True),
    (0, b"OggS", "audio/ogg", True),
    (0, b"fLaC", "audio/flac", True),
    (0, b"ID3", "audio/mpeg", True),
    (0, b"%PDF-", "application/pdf", False),
    (0, b"\x7fELF", "application/x-executable", False),
    (0, b"\x00asm", "application/wasm", False),
    (257, b"ustar", "application/x-tar", False),
)

_MP4_BRANDS = {
    b"qt  ": "video/quicktime",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"avif": "image/avif",
    b"M4A ": "audio/mp4",
    b"M4V ": "video/mp4",
}
_RIFF_KINDS = {
    b"WEBP": ("image/webp", True),
    b"AVI ": ("video/x-msvideo", True),
    b"WAVE": ("audio/wav", False),
}
_TEXT_TYPES_OK = (
    "text/",
    "application/json",
    "application/xml",
    "application/x-ndjson",
    "application/yaml",
    "application/javascript",
    "application/csv",
    "application/sql",
    "image/svg+xml",
)


def sniff(head: bytes) -> Sniffed:
    """Classify the first bytes of a body (a few KiB are enough)."""
    for offset, magic, content_type, compressed in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return Sniffed(content_type, compressed)
    if head[4:8] == b"ftyp":
        return Sniffed(_MP4_BRANDS.get(head[8:12], "video/mp4"), True)
    if head[:4] == b"RIFF" and head[8:12] in _RIFF_KINDS:
        content_type, compressed = _RIFF_KINDS[head[8:12]]
        return Sniffed(content_type, compressed)
    if head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return Sniffed("audio/mpeg", True)
    if _looks_like_text(head[:8192]):
        return Sniffed(_text_subtype(head), False)
    return Sniffed(OCTET_STREAM, False)


_PROBE = zstandard.ZstdCompressor(level=1)  # used from the event loop thread only
PROBE_BYTES = 64 * 1024


def incompressible(head: bytes) -> bool:
    """A fast zstd-1 trial on the first 64 KiB saves less than 3 %: compressing the
    rest would burn CPU for nothing (random or encrypted data, unknown formats)."""
    sample = head[:PROBE_BYTES]
    if len(sample) < 4096:
        return False
    return len(_PROBE.compress(sample)) > 0.97 * len(sample)


def _looks_like_text(sample: bytes) -> bool:
    if not sample or b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        if exc.start < len(sample) - 3:
            return False
    return True


def _text_subtype(head: bytes) -> str:
    start = head.lstrip()[:64].lower()
    if start.startswith((b"{", b"[")):
        return "application/json"
    if start.startswith(b"<?xml"):
        return "application/xml"
    if start.startswith((b"<!doctype html", b"<html")):
        return "text/html"
    return TEXT_PLAIN


def resolve_content_type(sniffed: Sniffed, declared: str | None) -> str:
    """The type recorded for the file: the sniffed one when the bytes say it; the
    client's only where the bytes cannot tell and the claim is consistent with them."""
    declared = (declared or "").split(";")[0].strip().lower()
    if not declared or "/" not in declared or len(declared) > 127:
        return sniffed.content_type
    if sniffed.content_type == OCTET_STREAM:
        claims_known_magic = any(declared == t for _, _, t, _ in _SIGNATURES)
        return OCTET_STREAM if claims_known_magic or declared.startswith("text/") else declared
    if sniffed.content_type in (TEXT_PLAIN, "application/json", "application/xml"):
        return declared if declared.startswith(_TEXT_TYPES_OK) else sniffed.content_type
    return sniffed.content_type


def content_type_allowed(content_type: str, allowed: list[str]) -> bool:
    """`allowed` holds exact types and `type/*` wildcards; empty allows everything."""
    if not allowed:
        return True
    major = content_type.split("/")[0]
    return any(a == content_type or a == f"{major}/*" or a == "*/*" for a in allowed)
