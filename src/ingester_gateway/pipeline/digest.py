"""The client's claimed sha256 of the original bytes (RFC 9530 or X-Checksum-SHA256)."""

from __future__ import annotations

import base64
import binascii
import re

from ingester_gateway.errors import INVALID_DIGEST

_CONTENT_DIGEST_ITEM = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*")


def claimed_sha256(content_digest: str | None, checksum_header: str | None) -> bytes | None:
    """The 32-byte digest the client vouches for, None if it sent none, 400 if malformed.

    `Content-Digest` is a structured dictionary (`sha-256=:b64:, sha-512=:b64:`); only
    sha-256 is checked, other algorithms are ignored. Both headers must agree.
    """
    found: list[bytes] = []
    if content_digest:
        for item in content_digest.split(","):
            match = _CONTENT_DIGEST_ITEM.fullmatch(item)
            if match is None:
                raise INVALID_DIGEST("malformed Content-Digest header")
            if match.group(1).lower() != "sha-256":
                continue
            try:
                value = base64.b64decode(match.group(2), validate=True)
            except binascii.Error:
                raise INVALID_DIGEST("malformed Content-Digest sha-256 value") from None
            if len(value) != 32:
                raise INVALID_DIGEST("Content-Digest sha-256 must be 32 bytes")
            found.append(value)
    if checksum_header:
        text = checksum_header.strip()
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise INVALID_DIGEST("X-Checksum-SHA256 must be 64 hex digits")
        found.append(bytes.fromhex(text))
    if not found:
        return None
    if any(value != found[0] for value in found):
        raise INVALID_DIGEST("Content-Digest and X-Checksum-SHA256 disagree")
    return found[0]
