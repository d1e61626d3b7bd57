"""`/openapi.json`'s part for `/api/v1/tus/`: tus 1.0 and the IETF draft on one endpoint,
their header fields, answers and errors (from the catalogue)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ingester_gateway import errors
from ingester_gateway.errors import Problem
from ingester_gateway.resumable.protocol import EXTENSIONS

# Errors only resumable uploads answer.
TUS_PROBLEMS = [
    errors.UNSUPPORTED_CHECKSUM,
    errors.INCONSISTENT_LENGTH,
    errors.UPLOAD_INTERRUPTED,
    errors.PARTIAL_UNFINISHED,
    errors.FINAL_UPLOAD,
    errors.ORIGIN_NOT_ALLOWED,
    errors.OFFSET_MISMATCH,
    errors.UPLOAD_BUSY,
    errors.UPLOAD_EXPIRED,
    errors.TUS_VERSION,
    errors.UPLOAD_LOCKED,
    errors.UPLOAD_CHECKSUM_MISMATCH,
    errors.UPLOAD_STATE_UNAVAILABLE,
]
_COMMON = [
    errors.BAD_REQUEST,
    errors.UNAUTHORIZED,
    errors.FORBIDDEN,
    errors.NOT_FOUND,
    errors.TUS_VERSION,
    errors.UPLOAD_LOCKED,
    errors.UPLOAD_EXPIRED,
    errors.UPLOAD_STATE_UNAVAILABLE,
    errors.INTERNAL_ERROR,
]
_DATA = [
    errors.PAYLOAD_TOO_LARGE,
    errors.UNSUPPORTED_CHECKSUM,
    errors.UPLOAD_CHECKSUM_MISMATCH,
    errors.DIGEST_MISMATCH,
    errors.INVALID_DIGEST,
    errors.INCONSISTENT_LENGTH,
    errors.REQUEST_TIMEOUT,
    errors.INSUFFICIENT_STORAGE,
]


def _header(name: str, description: str, schema: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": schema},
    }


_CREATE_HEADERS = [
    _header("Tus-Resumable", "1.0.0 (tus) — or Upload-Draft-Interop-Version: 8 (IETF draft)"),
    _header("Upload-Draft-Interop-Version", "8: the IETF draft's rules apply to this request"),
    _header("Upload-Length", "the upload's size (tus: this or Upload-Defer-Length: 1)", "integer"),
    _header("Upload-Defer-Length", "1: the size comes with a later PATCH (tus)"),
    _header(
        "Upload-Metadata",
        "tus: `key base64,...`: filename, filetype and the upload options "
        "(description, retention_policy, ttl_days, compress, compression_algorithm, "
        "metadata), checked as on the streamed routes",
    ),
    _header("Upload-Concat", "tus: `partial`, or `final;<url> <url>` to join partial uploads"),
    _header("Upload-Complete", "IETF: ?1 when this request carries the whole file, else ?0"),
    _header("Content-Disposition", "IETF: the file name (`filename`, `filename*`)"),
    _header("Repr-Digest", "IETF: `sha-256=:b64:` of the whole file, checked as it is stored"),
    _header("Upload-Checksum", "tus: `<sha1|sha256|md5|sha512> <b64>` of this request's data"),
    _header("Content-Digest", "IETF: `sha-256=:b64:` (or sha-512) of this request's data"),
]
_APPEND_HEADERS = [
    _header("Upload-Offset", "where this request's data goes: the upload's offset", "integer"),
    *[
        h
        for h in _CREATE_HEADERS
        if h["name"]
        in (
            "Tus-Resumable",
            "Upload-Draft-Interop-Version",
            "Upload-Length",
            "Upload-Complete",
            "Upload-Checksum",
            "Content-Digest",
        )
    ],
]
_STATE_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}}
    for name, text in [
        ("Upload-Offset", "the durable offset"),
        ("Upload-Length", "the upload's size, once known"),
        ("Upload-Complete", "IETF: ?1 once no more data is taken"),
        ("Upload-Limit", "IETF: min-size, max-size, max-age"),
        ("Upload-Expires", "tus: when an unfinished upload expires"),
        ("Upload-State", "receiving, complete, storing, stored or failed"),
        ("Upload-File-Id", "the artStore file id, once stored"),
        ("Cache-Control", "no-store"),
    ]
}


def tus_paths(errors_of: Callable[[list[Problem]], dict[str, Any]]) -> dict[str, Any]:
    """The collection and an upload's resource."""
    upload_id = {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}
    status = {"application/json": {"schema": {"$ref": "#/components/schemas/ResumableStatus"}}}
    data = {
        "application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/partial-upload": {"schema": {"type": "string", "format": "binary"}},
    }
    return {
        "/api/v1/tus/": {
            "options": {
                "summary": f"Discovery: Tus-Version, Tus-Extension ({EXTENSIONS}), "
                "Tus-Max-Size, Tus-Checksum-Algorithm, Upload-Limit; CORS preflights",
                "security": [],
                "responses": {
                    "204": {"description": "what the endpoint offers"},
                    **errors_of([errors.ORIGIN_NOT_ALLOWED]),
                },
            },
            "post": {
                "summary": "Create a resumable upload (tus creation, creation-with-upload, "
                "creation-defer-length, concatenation; IETF upload creation). Options may "
                "also be query parameters, as on PUT /api/v1/files/{filename}",
                "parameters": _CREATE_HEADERS,
                "requestBody": {"required": False, "content": {**data, "*/*": {}}},
                "responses": {
                    "201": {
                        "description": "created: Location names the upload",
                        "headers": _STATE_HEADERS,
                    },
                    "202": {
                        "description": "IETF, whole file in one request: stored in the background",
                        "content": status,
                    },
                    **errors_of(
                        [
                            *_COMMON,
                            *_DATA,
                            errors.INVALID_PARAMETER,
                            errors.INVALID_FILENAME,
                            errors.EMPTY_FILE,
                            errors.PARTIAL_UNFINISHED,
                            errors.FINAL_UPLOAD,
                        ]
                    ),
                },
            },
        },
        "/api/v1/tus/{upload_id}": {
            "parameters": [upload_id],
            "head": {
                "summary": "The upload's durable offset (a request still appending is asked "
                "to let go first)",
                "responses": {
                    "200": {"description": "tus", "headers": _STATE_HEADERS},
                    "204": {"description": "IETF", "headers": _STATE_HEADERS},
                    **errors_of(_COMMON),
                },
            },
            "get": {
                "summary": "The upload's state as JSON; its artStore result once stored",
                "responses": {
                    "200": {"description": "state", "content": status, "headers": _STATE_HEADERS},
                    **errors_of(_COMMON),
                },
            },
            "patch": {
                "summary": "Append at Upload-Offset (tus application/offset+octet-stream, "
                "IETF application/partial-upload); a cut request keeps what arrived",
                "parameters": _APPEND_HEADERS,
                "requestBody": {"required": False, "content": data},
                "responses": {
                    "204": {"description": "appended", "headers": _STATE_HEADERS},
                    "202": {
                        "description": "IETF Upload-Complete: ?1: stored in the background",
                        "content": status,
                    },
                    **errors_of(
                        [
                            *_COMMON,
                            *_DATA,
                            errors.OFFSET_MISMATCH,
                            errors.FINAL_UPLOAD,
                            errors.UPLOAD_INTERRUPTED,
                            errors.UNSUPPORTED_MEDIA_TYPE,
                        ]
                    ),
                },
            },
            "delete": {
                "summary": "Terminate the upload: its staged bytes are removed",
                "responses": {
                    "204": {"description": "gone"},
                    **errors_of([*_COMMON, errors.UPLOAD_BUSY]),
                },
            },
        },
    }
