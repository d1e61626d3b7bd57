"""tus 1.0 and the IETF resumable-upload draft (interop version 8) as pure rules: which
one a request speaks, what its headers ask for, and the header fields of each answer.
No I/O: the ASGI edge (api/tus.py) reads the request and sends what these return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ingester_gateway import errors
from ingester_gateway.models import UploadOptions, parse_upload_options
from ingester_gateway.resumable.headers import (
    CHECKSUM_ALGORITHMS,
    Checksum,
    Concat,
    content_digest_checksum,
    disposition_filename,
    format_digest,
    format_metadata,
    http_date,
    parse_concat,
    parse_metadata,
    parse_upload_checksum,
    repr_sha256,
    sf_boolean,
    sf_dictionary,
    sf_integer,
    tus_integer,
)
from ingester_gateway.resumable.state import Dialect, UploadState
from ingester_gateway.upload.plan import check_filename

PREFIX = "/api/v1/tus/"
TUS_VERSION = "1.0.0"
INTEROP_VERSION = "8"
EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,termination,expiration,"
    "checksum,checksum-trailer,concatenation"
)
OFFSET_STREAM = "application/offset+octet-stream"  # tus PATCH bodies
PARTIAL_UPLOAD = "application/partial-upload"  # IETF append bodies
_OPTION_KEYS = frozenset(UploadOptions.__struct_fields__) | {"storage_mode"}

Headers = Mapping[str, str]  # lower-case names
Header = tuple[bytes, bytes]


def dialect_of(headers: Headers) -> Dialect:
    """The IETF draft when the request names its interop version, else tus."""
    return "ietf" if headers.get("upload-draft-interop-version") == INTEROP_VERSION else "tus"


def check_version(method: str, dialect: Dialect, headers: Headers) -> None:
    """tus requests that change something must say `Tus-Resumable: 1.0.0` (412 with the
    versions we speak); HEAD and GET are exempt, as in tusd (a browser may look)."""
    if dialect == "ietf" or method in ("OPTIONS", "HEAD", "GET"):
        return
    if headers.get("tus-resumable") != TUS_VERSION:
        raise errors.TUS_VERSION(
            "send Tus-Resumable: 1.0.0 (tus) or Upload-Draft-Interop-Version: 8 (IETF draft)"
        )


def method_of(method: str, headers: Headers) -> str:
    """tus `X-HTTP-Method-Override`: a POST that stands for PATCH, DELETE or HEAD."""
    override = headers.get("x-http-method-override")
    if method == "POST" and override:
        return override.strip().upper()
    return method


def _carries_data(headers: Headers, content_length: int | None) -> bool:
    """A body with bytes in it: a Content-Length above 0, or a chunked one."""
    if content_length is not None:
        return content_length != 0
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _media_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _content_length(headers: Headers) -> int | None:
    return tus_integer(headers.get("content-length"), "Content-Length")


def _trailer_wanted(headers: Headers, name: str) -> bool:
    return name in (part.strip().lower() for part in headers.get("trailer", "").split(","))


@dataclass(frozen=True, slots=True)
class Creation:
    """What a creation request (POST to the collection) asks for."""

    length: int | None  # None: deferred (tus) or not known yet (IETF)
    filename: str
    filetype: str | None
    options: UploadOptions
    metadata: dict[str, str]
    concat: Concat | None
    repr_sha256: bytes | None
    complete: bool  # IETF `Upload-Complete: ?1`: the body is the whole upload
    body: bool  # the request carries data to append at offset 0
    checksum: Checksum | None
    trailer_checksum: bool
    size: int | None  # Content-Length, when sent

    def data(self) -> Append:
        """The creation's data as an append at offset 0 (creation-with-upload)."""
        return Append(
            offset=0,
            length=self.length,
            complete=self.complete,
            checksum=self.checksum,
            trailer_checksum=self.trailer_checksum,
            empty=not self.body,
            size=self.size,
        )


def creation_of(
    dialect: Dialect, headers: Headers, query: Mapping[str, str], max_size: int, mount: str = ""
) -> Creation:
    """The creation request's headers, checked (400/413 for bad ones); `mount` is the
    path a trusted proxy serves us at (the partial uploads' URLs may carry it)."""
    content_length = _content_length(headers)
    has_data = _carries_data(headers, content_length)
    metadata = parse_metadata(headers.get("upload-metadata"))
    concat = None
    if dialect == "tus":
        concat = parse_concat(headers.get("upload-concat"), PREFIX, mount)
        length = tus_integer(headers.get("upload-length"), "Upload-Length")
        defer = headers.get("upload-defer-length")
        if defer is not None and defer.strip() != "1":
            raise errors.BAD_REQUEST("Upload-Defer-Length must be 1")
        final = concat is not None and not concat.partial
        if final and length is not None:
            raise errors.BAD_REQUEST("a final upload's length is the sum of its parts")
        if not final and (length is None) == (defer is None):
            raise errors.BAD_REQUEST("send either Upload-Length or Upload-Defer-Length: 1")
        complete = False
        body = has_data and _media_type(headers) == OFFSET_STREAM
        if body and final:
            raise errors.FINAL_UPLOAD("a final upload takes no data")
        filename = metadata.get("filename") or metadata.get("name")
        filetype = metadata.get("filetype") or metadata.get("type")
        checksum = parse_upload_checksum(headers.get("upload-checksum"))
        trailer = _trailer_wanted(headers, "upload-checksum")
    else:
        flag = sf_boolean(headers.get("upload-complete"), "Upload-Complete")
        if flag is None:
            raise errors.BAD_REQUEST("an IETF creation request needs Upload-Complete")
        complete = flag
        length = sf_integer(headers.get("upload-length"), "Upload-Length")
        if complete and content_length is not None:
            if length is not None and length != content_length:
                raise errors.INCONSISTENT_LENGTH(
                    f"Upload-Length {length} and Content-Length {content_length} disagree"
                )
            length = content_length
        body = has_data
        filename = disposition_filename(headers.get("content-disposition"))
        filename = filename or metadata.get("filename") or metadata.get("name")
        filetype = _media_type(headers) or None
        checksum = content_digest_checksum(headers.get("content-digest"))
        trailer = _trailer_wanted(headers, "content-digest")
    if length is not None and length > max_size:
        raise errors.PAYLOAD_TOO_LARGE(f"upload exceeds the limit of {max_size} bytes")
    fields = {k: v for k, v in metadata.items() if k in _OPTION_KEYS}
    fields.update({k: v for k, v in query.items() if k in _OPTION_KEYS})
    return Creation(
        length=length,
        filename=check_filename(filename or "upload.bin"),
        filetype=filetype,
        options=parse_upload_options(fields),
        metadata=metadata,
        concat=concat,
        repr_sha256=repr_sha256(headers.get("repr-digest")),
        complete=complete,
        body=body,
        checksum=checksum,
        trailer_checksum=trailer,
        size=content_length,
    )


@dataclass(frozen=True, slots=True)
class Append:
    """What an append request (PATCH on an upload) asks for."""

    offset: int
    length: int | None  # a length declared now (tus deferred length, IETF)
    complete: bool  # IETF `Upload-Complete: ?1`: this request ends the upload
    checksum: Checksum | None
    trailer_checksum: bool
    empty: bool  # no content at all
    size: int | None = None  # Content-Length, when sent


def append_of(dialect: Dialect, headers: Headers) -> Append:
    content_length = _content_length(headers)
    empty = not _carries_data(headers, content_length)
    media = _media_type(headers)
    if dialect == "tus":
        if media != OFFSET_STREAM:
            raise errors.UNSUPPORTED_MEDIA_TYPE(f"a tus PATCH is sent as {OFFSET_STREAM}")
        offset = tus_integer(headers.get("upload-offset"), "Upload-Offset")
        length = tus_integer(headers.get("upload-length"), "Upload-Length")
        complete = False
        checksum = parse_upload_checksum(headers.get("upload-checksum"))
        trailer = _trailer_wanted(headers, "upload-checksum")
    else:
        if media != PARTIAL_UPLOAD:
            raise errors.UNSUPPORTED_MEDIA_TYPE(f"an IETF append is sent as {PARTIAL_UPLOAD}")
        offset = sf_integer(headers.get("upload-offset"), "Upload-Offset")
        flag = sf_boolean(headers.get("upload-complete"), "Upload-Complete")
        if flag is None:
            raise errors.BAD_REQUEST("an IETF append needs Upload-Complete")
        complete = flag
        length = sf_integer(headers.get("upload-length"), "Upload-Length")
        if complete and content_length is not None:
            end = (offset or 0) + content_length
            if length is not None and length != end:
                raise errors.INCONSISTENT_LENGTH(
                    f"Upload-Length {length} and the end of this append ({end}) disagree"
                )
            length = end
        checksum = content_digest_checksum(headers.get("content-digest"))
        trailer = _trailer_wanted(headers, "content-digest")
    if offset is None:
        raise errors.BAD_REQUEST("Upload-Offset is required")
    return Append(offset, length, complete, checksum, trailer, empty, content_length)


def trailer_checksum(dialect: Dialect, trailers: Headers) -> Checksum | None:
    """The checksum a chunked request sent after its data (checksum-trailer)."""
    if dialect == "tus":
        return parse_upload_checksum(trailers.get("upload-checksum"))
    return content_digest_checksum(trailers.get("content-digest"))


def location(upload_id: str, base: str = "") -> str:
    """The upload's URL: `base` (where a trusted proxy says the client reached us:
    `api/forwarded.py`) before our path; without one, a path clients resolve against
    the request's URL."""
    return base + PREFIX + upload_id


# -- answers ---------------------------------------------------------------------------


def _h(name: str, value: str | int) -> Header:
    return (name.encode(), str(value).encode("latin-1"))


def upload_limit(max_size: int, state: UploadState | None, now: float) -> str:
    """IETF `Upload-Limit`: the size limit and, for an upload, its remaining lifetime."""
    members = [("min-size", 0), ("max-size", max_size)]
    if state is not None:
        members.append(("max-age", max(0, int(state.expires_at - now))))
    return sf_dictionary(members)


def common(dialect: Dialect) -> list[Header]:
    """What every answer of the dialect carries."""
    if dialect == "tus":
        return [_h("tus-resumable", TUS_VERSION)]
    return [_h("upload-draft-interop-version", INTEROP_VERSION)]


def discovery(max_size: int) -> list[Header]:
    """OPTIONS: what the endpoint offers, in both dialects."""
    return [
        _h("tus-resumable", TUS_VERSION),
        _h("tus-version", TUS_VERSION),
        _h("tus-extension", EXTENSIONS),
        _h("tus-max-size", max_size),
        _h("tus-checksum-algorithm", ",".join(CHECKSUM_ALGORITHMS)),
        _h("upload-limit", upload_limit(max_size, None, 0)),
        _h("accept-patch", PARTIAL_UPLOAD),
    ]


def complete_flag(state: UploadState) -> str:
    """IETF `Upload-Complete`: no more data will be taken."""
    return "?0" if state.receiving else "?1"


def progress_headers(state: UploadState) -> list[Header]:
    """Where the upload is on its way into artStore (our own fields, both dialects)."""
    headers = [_h("upload-state", state.phase)]
    if state.result is not None:
        headers.append(_h("upload-file-id", state.result.file_id))
    return headers


def state_headers(
    dialect: Dialect, state: UploadState, now: float, max_size: int, base: str = ""
) -> list[Header]:
    """HEAD (and GET) of an upload: its durable offset and what is known of it."""
    headers = [*common(dialect), _h("cache-control", "no-store"), _h("upload-offset", state.offset)]
    if dialect == "tus":
        if state.length is None:
            headers.append(_h("upload-defer-length", 1))
        else:
            headers.append(_h("upload-length", state.length))
        if state.metadata:
            headers.append(_h("upload-metadata", format_metadata(state.metadata)))
        if state.partial:
            headers.append(_h("upload-concat", "partial"))
        elif state.final:
            finals = " ".join(location(part, base) for part in state.parts)
            headers.append(_h("upload-concat", f"final;{finals}"))
        if state.receiving:
            headers.append(_h("upload-expires", http_date(state.expires_at)))
    else:
        headers.append(_h("upload-complete", complete_flag(state)))
        if state.length is not None:
            headers.append(_h("upload-length", state.length))
        headers.append(_h("upload-limit", upload_limit(max_size, state, now)))
        if state.result is not None:
            digest = bytes.fromhex(state.result.checksum)
            headers.append(_h("repr-digest", format_digest("sha-256", digest)))
    return [*headers, *progress_headers(state)]


def append_headers(dialect: Dialect, state: UploadState, now: float, max_size: int) -> list[Header]:
    """The answer to data appended (a PATCH, or a creation with data)."""
    headers = [*common(dialect), _h("upload-offset", state.offset)]
    if dialect == "tus":
        if state.receiving:
            headers.append(_h("upload-expires", http_date(state.expires_at)))
    else:
        headers.append(_h("upload-complete", complete_flag(state)))
        headers.append(_h("upload-limit", upload_limit(max_size, state, now)))
    return [*headers, *progress_headers(state)]


def created_headers(
    dialect: Dialect, state: UploadState, now: float, max_size: int, base: str = ""
) -> list[Header]:
    created = location(state.id, base)
    return [_h("location", created), *append_headers(dialect, state, now, max_size)]
