"""The header fields of resumable uploads, parsed and written: pure functions, no I/O.

tus 1.0 spells its fields as plain text (`Upload-Offset: 42`, `Upload-Metadata: key
base64,...`, `Upload-Checksum: sha1 base64`, `Upload-Concat: final;/a /b`); the IETF
draft uses Structured Fields (RFC 9651: `Upload-Offset: 42`, `Upload-Complete: ?1`,
`Upload-Limit: max-size=1000, max-age=3600`) and RFC 9530 digests (`Repr-Digest:
sha-256=:base64:`). Every malformed value is a 400 from the error catalogue.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ingester_gateway import errors

# tus: the checksum extension's algorithms (hashlib's names) and the digest length each gives.
CHECKSUM_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "md5": hashlib.md5,
    "sha512": hashlib.sha512,
}
# RFC 9530's registry names of the digests we compute, and hashlib's.
DIGEST_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}

_DIGITS = re.compile(r"[0-9]{1,15}")
_SF_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_METADATA_KEY = re.compile(r"[^\s,]+")


def tus_integer(value: str | None, name: str) -> int | None:
    """A tus length or offset: plain decimal digits, None when the field is absent."""
    if value is None:
        return None
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        raise errors.BAD_REQUEST(f"{name} must be a non-negative integer")
    return int(text)


def _bare_item(value: str) -> str:
    """An Item's value without its parameters (`?1;a=b` -> `?1`)."""
    return value.split(";", 1)[0].strip()


def sf_integer(value: str | None, name: str) -> int | None:
    """A non-negative Structured Field Integer; None when absent, 400 when malformed
    (the draft: a malformed field is ignored, but a request relying on it cannot go on)."""
    if value is None:
        return None
    text = _bare_item(value)
    if not _DIGITS.fullmatch(text):
        raise errors.BAD_REQUEST(f"{name} must be a non-negative Structured Field Integer")
    return int(text)


def sf_boolean(value: str | None, name: str) -> bool | None:
    """`?1` / `?0`; None when absent, 400 when malformed."""
    if value is None:
        return None
    text = _bare_item(value)
    if text not in ("?0", "?1"):
        raise errors.BAD_REQUEST(f"{name} must be ?1 or ?0")
    return text == "?1"


def sf_dictionary(members: Iterable[tuple[str, int]]) -> str:
    """Integer members as a Structured Field Dictionary (`Upload-Limit`)."""
    return ", ".join(f"{key}={value}" for key, value in members)


def parse_digests(value: str | None, name: str) -> dict[str, bytes]:
    """An RFC 9530 digest field (`sha-256=:b64:, sha-512=:b64:`): algorithm -> digest.
    Members that are not byte sequences are ignored; a malformed member is a 400."""
    found: dict[str, bytes] = {}
    if not value:
        return found
    for member in _split_members(value):
        key, sep, item = member.partition("=")
        key = key.strip()
        if not _SF_KEY.fullmatch(key):
            raise errors.INVALID_DIGEST(f"malformed {name} member {key!r}")
        item = _bare_item(item) if sep else ""
        if not (item.startswith(":") and item.endswith(":") and len(item) >= 2):
            continue  # not a byte sequence: no digest we could check
        try:
            found[key] = base64.b64decode(item[1:-1], validate=True)
        except binascii.Error:
            raise errors.INVALID_DIGEST(f"malformed {name} value for {key}") from None
    return found


def _split_members(value: str) -> list[str]:
    """Dictionary members split on commas (none occurs inside a byte sequence)."""
    return [part for part in (p.strip() for p in value.split(",")) if part]


def format_digest(algorithm: str, digest: bytes) -> str:
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


def parse_metadata(value: str | None) -> dict[str, str]:
    """tus `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be
    absent), keys unique; values decoded as UTF-8 text."""
    found: dict[str, str] = {}
    if value is None or not value.strip():
        return found
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0] or not _METADATA_KEY.fullmatch(parts[0]):
            raise errors.BAD_REQUEST(f"Upload-Metadata: malformed pair {pair.strip()!r}")
        key = parts[0]
        if key in found:
            raise errors.BAD_REQUEST(f"Upload-Metadata: key {key!r} appears twice")
        try:
            raw = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
            found[key] = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise errors.BAD_REQUEST(
                f"Upload-Metadata: the value of {key!r} is not base64 of UTF-8 text"
            ) from None
    return found


def format_metadata(metadata: dict[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
        for key, value in metadata.items()
    )


@dataclass(frozen=True, slots=True)
class Checksum:
    """A digest the client vouches for: tus `Upload-Checksum` or RFC 9530
    `Content-Digest`, of one request's content."""

    algorithm: str  # hashlib's name
    digest: bytes
    header: str  # where it came from, for messages

    def new(self) -> Any:
        return hashlib.new(self.algorithm)


def parse_upload_checksum(value: str | None) -> Checksum | None:
    """tus `Upload-Checksum: <algorithm> <base64>`; an algorithm we do not offer is a
    400 (the checksum extension's word)."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        offered = ", ".join(CHECKSUM_ALGORITHMS)
        raise errors.UNSUPPORTED_CHECKSUM(
            f"Upload-Checksum algorithm {algorithm!r} is not offered (use {offered})"
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise errors.BAD_REQUEST("Upload-Checksum: the digest is not base64") from None
    return Checksum(algorithm, digest, "Upload-Checksum")


def content_digest_checksum(value: str | None) -> Checksum | None:
    """RFC 9530 `Content-Digest` of one request: the strongest algorithm we compute."""
    digests = parse_digests(value, "Content-Digest")
    for name in ("sha-512", "sha-256"):
        if name in digests:
            return Checksum(name.replace("-", ""), digests[name], "Content-Digest")
    return None


def repr_sha256(value: str | None) -> bytes | None:
    """RFC 9530 `Repr-Digest` of the whole upload: its sha-256, which the upload core
    checks as it stores the file (other algorithms are not checked)."""
    digest = parse_digests(value, "Repr-Digest").get("sha-256")
    if digest is not None and len(digest) != 32:
        raise errors.INVALID_DIGEST("Repr-Digest sha-256 must be 32 bytes")
    return digest


@dataclass(frozen=True, slots=True)
class Concat:
    partial: bool
    parts: tuple[str, ...] = ()  # a final upload's partial uploads, in order


def parse_concat(value: str | None, prefix: str, mount: str = "") -> Concat | None:
    """tus `Upload-Concat`: `partial`, or `final;<url> <url> ...` where each URL (absolute
    or a path) names an upload under `prefix`, or under `mount` + `prefix` (the URLs
    given out behind a proxy that mounts us at `mount`)."""
    if value is None:
        return None
    text = value.strip()
    if text == "partial":
        return Concat(partial=True)
    kind, _, urls = text.partition(";")
    if kind.strip() != "final" or not urls.strip():
        raise errors.BAD_REQUEST("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    parts = []
    for url in urls.split():
        path = urllib.parse.urlsplit(url).path
        if mount and path.startswith(mount + prefix):
            path = path[len(mount) :]
        if not path.startswith(prefix) or "/" in path[len(prefix) :] or len(path) == len(prefix):
            raise errors.BAD_REQUEST(f"Upload-Concat: {url!r} is not an upload of this server")
        parts.append(path[len(prefix) :])
    return Concat(partial=False, parts=tuple(parts))


def disposition_filename(value: str | None) -> str | None:
    """The file name of a `Content-Disposition` (RFC 6266): `filename*` (RFC 5987,
    UTF-8) before `filename`."""
    if not value:
        return None
    params: dict[str, str] = {}
    for part in _disposition_params(value):
        key, _, raw = part.partition("=")
        params[key.strip().lower()] = raw.strip()
    extended = params.get("filename*")
    if extended:
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        try:
            return urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            raise errors.INVALID_FILENAME("Content-Disposition: undecodable filename*") from None
    plain = params.get("filename")
    if plain is None:
        return None
    if plain.startswith('"') and plain.endswith('"') and len(plain) >= 2:
        plain = re.sub(r"\\(.)", r"\1", plain[1:-1])
    return plain


def _disposition_params(value: str) -> list[str]:
    """The `;`-separated parameters after the disposition type, quotes respected."""
    params: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            params.append("".join(current))
            current = []
            continue
        current.append(char)
    params.append("".join(current))
    return params[1:]


def http_date(timestamp: float) -> str:
    """`Wed, 25 Jun 2014 16:00:00 GMT` (tus `Upload-Expires`)."""
    return email.utils.formatdate(timestamp, usegmt=True)
