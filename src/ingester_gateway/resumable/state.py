"""A resumable upload's state, and the rules that move it: pure, with the clock passed in.

    receiving --last byte durable--> complete --job starts--> storing --> stored
                                                                      \\-> failed
    failed --the client asks again (an empty append at the end)--> complete

A partial upload (tus concatenation) stays `complete` until a final upload takes it;
a final upload is `complete` from its creation. An upload expires `expiry` seconds
after its last append (or after it was stored or failed); one being stored does not.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ingester_gateway import errors
from ingester_gateway.auth.verify import Principal
from ingester_gateway.models import UploadOptions, UploadProgress, UploadResult, iso_utc
from ingester_gateway.models import UploadState as UploadPhase

Phase = Literal["receiving", "complete", "storing", "stored", "failed"]
Dialect = Literal["tus", "ietf"]


class Owner(msgspec.Struct, frozen=True):
    """Who created the upload: only they see it; the store acts in their name."""

    sub: str
    role: str
    name: str | None = None
    token_type: str | None = None
    client_id: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> Owner:
        return cls(
            principal.sub,
            principal.role,
            principal.name,
            principal.token_type,
            principal.client_id,
        )

    def principal(self, token: str = "") -> Principal:
        return Principal(
            sub=self.sub,
            role=self.role,
            token_type=self.token_type,
            name=self.name,
            client_id=self.client_id,
            expires_at=0,
            token=token,
        )


class UploadState(msgspec.Struct, kw_only=True):
    id: str
    owner: Owner
    dialect: Dialect
    created_at: float
    expires_at: float
    offset: int = 0
    length: int | None = None  # None: not declared yet (creation-defer-length)
    filename: str
    filetype: str | None = None
    options: UploadOptions = msgspec.field(default_factory=UploadOptions)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)  # Upload-Metadata as sent
    client_address: str | None = None
    partial: bool = False  # tus concatenation: a part of a final upload, never stored alone
    parts: list[str] = msgspec.field(default_factory=list)  # a final upload: its partials
    final_of: str | None = None  # a partial taken by this final upload
    repr_sha256: str | None = None  # the whole upload's sha-256 the client declared (hex)
    eager: bool = False  # stored while it is received (see storing.py)
    phase: Phase = "receiving"
    error: str | None = None
    result: UploadResult | None = None

    @property
    def final(self) -> bool:
        return bool(self.parts)

    @property
    def receiving(self) -> bool:
        return self.phase == "receiving"

    def expired(self, now: float) -> bool:
        return now >= self.expires_at and self.phase not in ("complete", "storing")


def touched(state: UploadState, now: float, expiry: float) -> None:
    """The upload was used: its lifetime starts again (never shortened)."""
    state.expires_at = max(state.expires_at, now + expiry)


def check_visible(state: UploadState | None, sub: str, now: float) -> UploadState:
    """The upload if `sub` owns it: 404 for anyone else (it does not exist for them),
    410 once it expired."""
    if state is None or state.owner.sub != sub:
        raise errors.NOT_FOUND("no such upload")
    if state.expired(now):
        raise errors.UPLOAD_EXPIRED("the upload expired")
    return state


def check_append(state: UploadState, offset: int) -> None:
    """May data be appended at `offset`? (A completed upload is answered before this.)"""
    if state.final:
        raise errors.FINAL_UPLOAD("a final upload is assembled from its parts; it takes no data")
    if offset != state.offset:
        raise errors.OFFSET_MISMATCH(
            f"the upload's offset is {state.offset}, not {offset}",
            [(b"upload-offset", str(state.offset).encode())],
        )


def declare_length(state: UploadState, length: int, limit: int) -> None:
    """The client names the upload's length (later than creation, or again)."""
    if length > limit:
        raise errors.PAYLOAD_TOO_LARGE(f"upload exceeds the limit of {limit} bytes")
    if state.length is not None and state.length != length:
        raise errors.INCONSISTENT_LENGTH(
            f"the upload's length was declared as {state.length}, not {length}"
        )
    if length < state.offset:
        raise errors.INCONSISTENT_LENGTH(
            f"the length {length} is less than the {state.offset} bytes received"
        )
    state.length = length


def room(state: UploadState, limit: int) -> int:
    """How many bytes may still be appended."""
    bound = state.length if state.length is not None else limit
    return max(0, bound - state.offset)


def appended(state: UploadState, offset: int, now: float, expiry: float) -> None:
    """Bytes up to `offset` are durable in staging."""
    state.offset = offset
    touched(state, now, expiry)
    if state.length is not None and offset == state.length and not state.partial:
        state.phase = "complete"


def finished_partial(state: UploadState) -> bool:
    return state.partial and state.length is not None and state.offset == state.length


def stored(state: UploadState, result: UploadResult, now: float, expiry: float) -> None:
    state.phase = "stored"
    state.result = result
    state.error = None
    state.expires_at = now + expiry


def failed(state: UploadState, message: str, now: float, expiry: float) -> None:
    state.phase = "failed"
    state.error = message
    state.expires_at = now + expiry


def retried(state: UploadState, now: float, expiry: float) -> None:
    """A failed upload goes back to be stored again (its staged bytes were kept)."""
    state.phase = "complete"
    state.error = None
    touched(state, now, expiry)


_SHOWN: dict[Phase, UploadPhase] = {
    "receiving": "receiving",
    "complete": "storing",
    "storing": "storing",
    "stored": "stored",
    "failed": "failed",
}


def progress_of(state: UploadState) -> UploadProgress:
    """`GET /api/v1/uploads/{id}` for a resumable upload."""
    shown = _SHOWN[state.phase]
    result = state.result
    return UploadProgress(
        upload_id=state.id,
        state=shown,
        filename=state.filename,
        bytes_received=state.offset,
        bytes_sent=result.stored_size if result is not None else 0,
        expected_bytes=state.length,
        storage_element_id=result.storage_element_id if result is not None else None,
        file_id=result.file_id if result is not None else None,
        error=state.error,
        started_at=iso_utc(state.created_at),
        finished_at=result.uploaded_at if result is not None else None,
        registration=result.registration if result is not None else None,
    )


class ResumableStatus(msgspec.Struct):
    """`GET /api/v1/tus/{id}`: the upload as its owner sees it; `result` (the 201 body
    of a streamed upload) once it is stored."""

    upload_id: str
    state: Phase
    offset: int
    length: int | None
    filename: str
    expires_at: str
    file_id: str | None = None
    error: str | None = None
    result: UploadResult | None = None


def status_of(state: UploadState) -> ResumableStatus:
    return ResumableStatus(
        upload_id=state.id,
        state=state.phase,
        offset=state.offset,
        length=state.length,
        filename=state.filename,
        expires_at=iso_utc(state.expires_at),
        file_id=state.result.file_id if state.result is not None else None,
        error=state.error,
        result=state.result,
    )
