"""The error catalogue: every error the API answers, declared once (tusd's lesson).

Each `Problem` is a status and a code with what it means; an `ApiError` is one problem
with this request's message. Envelopes, the last-resort 500 and the OpenAPI responses
are all built from this table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    code: str
    description: str
    headers: tuple[Header, ...] = ()  # sent with every answer of this kind

    def __call__(self, message: str, headers: Sequence[Header] = ()) -> ApiError:
        return ApiError(self, message, headers)


CATALOGUE: list[Problem] = []


def _problem(status: int, code: str, description: str, *headers: Header) -> Problem:
    problem = Problem(status, code, description, headers)
    CATALOGUE.append(problem)
    return problem


_RETRY_AFTER: Header = (b"retry-after", b"5")

BAD_REQUEST = _problem(400, "bad_request", "The request is malformed")
INVALID_PARAMETER = _problem(400, "invalid_parameter", "An upload option has a bad value")
INVALID_FILENAME = _problem(400, "invalid_filename", "The file name is empty, too long or unsafe")
INVALID_DIGEST = _problem(400, "invalid_digest", "A digest header is malformed")
MALFORMED_MULTIPART = _problem(400, "malformed_multipart", "The multipart body is malformed")
MISSING_FILE = _problem(400, "missing_file", "The form has no 'file' part")
FIELD_AFTER_FILE = _problem(400, "field_after_file", "A control field follows the 'file' part")
EMPTY_FILE = _problem(400, "empty_file", "A 0-byte file, which artStore cannot register")
LENGTH_MISMATCH = _problem(400, "length_mismatch", "The body does not match its Content-Length")
UNSUPPORTED_CHECKSUM = _problem(
    400, "unsupported_checksum", "Upload-Checksum names an algorithm the server does not offer"
)
INCONSISTENT_LENGTH = _problem(
    400, "inconsistent_length", "The upload's length differs from what was declared before"
)
UPLOAD_INTERRUPTED = _problem(
    400,
    "upload_interrupted",
    "Another request for this resumable upload took it over; the bytes that arrived are kept",
)
PARTIAL_UNFINISHED = _problem(
    400, "partial_unfinished", "A partial upload named in Upload-Concat is not complete"
)
UNAUTHORIZED = _problem(
    401,
    "unauthorized",
    "No valid bearer token",
    (b"www-authenticate", b'Bearer realm="ingester"'),
)
FORBIDDEN = _problem(403, "forbidden", "The token's role may not do this")
INSUFFICIENT_SCOPE = _problem(403, "insufficient_scope", "The token lacks the files:write scope")
NOT_FOUND = _problem(404, "not_found", "No such resource (or not the caller's)")
FINAL_UPLOAD = _problem(403, "final_upload", "A concatenated (final) upload takes no data")
ORIGIN_NOT_ALLOWED = _problem(
    403, "origin_not_allowed", "The Origin is not in INGESTER_CORS_ORIGINS"
)
METHOD_NOT_ALLOWED = _problem(405, "method_not_allowed", "The route does not take this method")
REQUEST_TIMEOUT = _problem(408, "request_timeout", "The client sent no body data for too long")
FINALIZE_IN_PROGRESS = _problem(409, "finalize_in_progress", "Another finalize moves this file")
ALREADY_PERMANENT = _problem(409, "already_permanent", "The file is not temporary")
UPLOAD_ID_IN_USE = _problem(
    409, "upload_id_in_use", "X-Upload-Id names an upload of the same user still running"
)
OFFSET_MISMATCH = _problem(
    409, "offset_mismatch", "Upload-Offset is not the upload's offset (sent in Upload-Offset)"
)
UPLOAD_BUSY = _problem(
    409, "upload_busy", "The upload is being stored, or is part of a final upload"
)
UPLOAD_EXPIRED = _problem(410, "upload_expired", "The resumable upload expired")
LENGTH_REQUIRED = _problem(411, "length_required", "Neither Content-Length nor a chunked body")
TUS_VERSION = _problem(
    412,
    "tus_version",
    "Neither Tus-Resumable: 1.0.0 nor Upload-Draft-Interop-Version: 8",
    (b"tus-version", b"1.0.0"),
)
PAYLOAD_TOO_LARGE = _problem(413, "payload_too_large", "The upload exceeds the size limit")
UNSUPPORTED_MEDIA_TYPE = _problem(415, "unsupported_media_type", "The content type is refused")
DIGEST_MISMATCH = _problem(422, "digest_mismatch", "The body does not match the client's digest")
TOO_MANY_UPLOADS = _problem(
    429,
    "too_many_uploads",
    "The user has as many uploads in flight as its role allows",
    _RETRY_AFTER,
)
RATE_LIMITED = _problem(
    429,
    "rate_limited",
    "The user sent more requests per minute than its role or token allows",
    _RETRY_AFTER,
)
BYTE_QUOTA_EXCEEDED = _problem(
    429,
    "byte_quota_exceeded",
    "The user sent more bytes over the window than its quota allows",
    _RETRY_AFTER,
)
UPLOAD_LOCKED = _problem(
    423, "upload_locked", "Another request holds the resumable upload; retry", _RETRY_AFTER
)
UPLOAD_CHECKSUM_MISMATCH = _problem(
    460, "upload_checksum_mismatch", "The request's content does not match its checksum (tus)"
)
INTERNAL_ERROR = _problem(500, "internal_error", "A bug: reported, never a traceback")
STORAGE_FAILED = _problem(502, "storage_failed", "The storage element refused or failed")
STORAGE_TIMEOUT = _problem(502, "storage_timeout", "The storage element stopped taking data")
STORAGE_CREDENTIALS = _problem(502, "storage_credentials", "No credential for the storage element")
REGISTRATION_REFUSED = _problem(
    502, "registration_refused", "artStore's Admin Module refused to register the file"
)
CHECKSUM_MISMATCH = _problem(
    502, "checksum_mismatch", "The storage element stored other bytes than were sent"
)
NO_STORAGE_AVAILABLE = _problem(
    503, "no_storage_available", "No storage element can take the upload now", _RETRY_AFTER
)
STORAGE_FAILED_MID_UPLOAD = _problem(
    503,
    "storage_failed_mid_upload",
    "A storage element failed past the replay buffer; retry",
    _RETRY_AFTER,
)
SHUTTING_DOWN = _problem(
    503,
    "shutting_down",
    "This instance is draining before it stops; retry, another one will answer",
    (b"retry-after", b"1"),
)
UPLOAD_STATE_UNAVAILABLE = _problem(
    503,
    "upload_state_unavailable",
    "The resumable uploads' state (Redis) cannot be reached now",
    _RETRY_AFTER,
)
INSUFFICIENT_STORAGE = _problem(507, "insufficient_storage", "No storage element has room")

# The edge (runtime/edge.py): answered before any route, any token, for every path.
MALFORMED_REQUEST = _problem(400, "malformed_request", "The request is not valid HTTP/1.1")
REPEATED_HEADER = _problem(
    400, "repeated_header", "A header field that must appear once (Authorization, ...) repeats"
)
HEADER_TIMEOUT = _problem(408, "header_timeout", "The request's header did not arrive in time")
REQUEST_LINE_TOO_LONG = _problem(414, "request_line_too_long", "The request target is too long")
CLIENT_TOO_MANY_CONNECTIONS = _problem(
    429,
    "too_many_client_connections",
    "The client's address holds as many connections as it may",
    _RETRY_AFTER,
)
HEADER_TOO_LARGE = _problem(
    431, "header_too_large", "The request's header is too large or has too many fields"
)
UNSUPPORTED_TRANSFER_CODING = _problem(
    501, "unsupported_transfer_coding", "A Transfer-Encoding other than chunked"
)
TOO_MANY_CONNECTIONS = _problem(
    503, "too_many_connections", "The server holds as many connections as it may", _RETRY_AFTER
)


_PLAIN_WORD = re.compile(r"[A-Za-z0-9._-]{1,64}")
_REPR = re.compile(r"""'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|unknown field `([^`]*)`""")


def quoted(text: str) -> str:
    """A client's word in a message: quoted when it is a short plain name (a form field's
    name, a node id), else left out. Messages, and the logs that repeat them, never
    carry request bytes."""
    return repr(text) if _PLAIN_WORD.fullmatch(text) else "(not shown)"


def without_values(message: str) -> str:
    """A decoder's validation message with the client's values in it passed through
    `quoted` (msgspec quotes an enum's bad value, an unknown field's name)."""

    def one(match: re.Match[str]) -> str:
        value = next(group for group in match.groups() if group is not None)
        if match.group(3) is not None:
            return f"unknown field {quoted(value)}"
        return quoted(value)

    return _REPR.sub(one, message)


class ApiError(Exception):
    """An error answered to the client as `{"error": {code, message, request_id}}`."""

    def __init__(self, problem: Problem, message: str, headers: Sequence[Header] = ()) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
        # A header given here replaces the problem's default of the same name.
        given = {name for name, _ in headers}
        self.headers: list[Header] = [
            *(h for h in problem.headers if h[0] not in given),
            *headers,
        ]

    @property
    def status(self) -> int:
        return self.problem.status

    @property
    def code(self) -> str:
        return self.problem.code


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    request_id: str


class ErrorEnvelope(msgspec.Struct):
    error: ErrorDetail


_encoder = msgspec.json.Encoder()


def error_body(error: ApiError, request_id: str) -> bytes:
    """The JSON envelope of `error`."""
    return _encoder.encode(ErrorEnvelope(ErrorDetail(error.code, error.message, request_id)))


def by_status(statuses: Sequence[int] | None = None) -> dict[int, list[Problem]]:
    """The catalogue grouped by status (all, or only `statuses`), for API descriptions."""
    grouped: dict[int, list[Problem]] = {}
    for problem in CATALOGUE:
        if statuses is None or problem.status in statuses:
            grouped.setdefault(problem.status, []).append(problem)
    return dict(sorted(grouped.items()))
