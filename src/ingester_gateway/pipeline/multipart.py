"""Incremental multipart/form-data reading on top of `multipart.PushMultipartParser`.

The parser is sans-io: body pieces go in, segment events come out. This module turns
those events into "next part" / "data of this part" calls for the gateway (control
fields, then one streamed `file` part) and the reference Storage Element.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import multipart

from ingester_gateway import errors
from ingester_gateway.errors import ApiError

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 64


@dataclass(frozen=True, slots=True)
class PartHeader:
    name: str
    filename: str | None
    content_type: str | None


# A media type's parameter: a token, `=`, a token or a quoted string (RFC 9110 5.6.6).
_PARAMETER = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;]*)')


def boundary_from(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data` Content-Type, or a 400/415."""
    media, options = multipart.parse_options_header(content_type)
    if media != "multipart/form-data":
        raise errors.UNSUPPORTED_MEDIA_TYPE("expected multipart/form-data")
    names = [name.lower() for name in _PARAMETER.findall(content_type)]
    if names.count("boundary") > 1:
        # Parsers differ on which one counts: the SE or a proxy could split the body
        # at another boundary than the gateway did.
        raise errors.BAD_REQUEST("the multipart boundary parameter is repeated")
    boundary = options.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise errors.BAD_REQUEST("multipart/form-data needs a boundary of 1 to 200 characters")
    try:
        return str(boundary).encode("latin-1")
    except UnicodeEncodeError:
        raise errors.BAD_REQUEST("invalid multipart boundary") from None


def malformed(exc: Exception) -> ApiError:
    # The parser's own sentence only: its further arguments may hold the bytes it could
    # not read (a part header that is not UTF-8 comes with the whole line).
    what = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "unreadable"
    return errors.MALFORMED_MULTIPART(f"malformed multipart body: {errors.without_values(what)}")


class MultipartReader:
    """Pull-style reader: `next_part()`, then `read_value()` or `iter_data()`."""

    def __init__(
        self, pieces: AsyncIterable[bytes], boundary: bytes, max_parts: int = MAX_PARTS
    ) -> None:
        self._pieces = pieces.__aiter__()
        self._parser = multipart.PushMultipartParser(
            boundary, max_segment_count=max_parts, max_header_count=16, strict=False
        )
        self._events: deque[object] = deque()
        self._in_part = False
        self._finished = False

    async def _event(self) -> object:
        """Next parser event: a segment, a bytes payload, None (end of part), or
        `_END` once the closing boundary has been read."""
        while not self._events:
            if self._finished:
                return _END
            try:
                piece = await self._pieces.__anext__()
            except StopAsyncIteration:
                piece = b""
            try:
                self._events.extend(self._parser.parse(piece))
            except multipart.MultipartError as exc:
                raise malformed(exc) from None
            if not piece or self._parser.closed:
                self._finished = True
        return self._events.popleft()

    async def next_part(self) -> PartHeader | None:
        """Skip what is left of the current part and return the next header, or None
        at the closing boundary."""
        while self._in_part:
            event = await self._event()
            if event is None or event is _END:
                self._in_part = False
        event = await self._event()
        if event is _END:
            await self._expect_end()
            return None
        if not isinstance(event, multipart.MultipartSegment):
            raise malformed(ValueError("unexpected data between parts"))
        # Not `is None`: the non-strict parser reports a missing name as "".
        if event.disposition != "form-data" or not event.name:
            raise errors.BAD_REQUEST(
                "every multipart part needs Content-Disposition: form-data; name="
            )
        self._in_part = True
        return PartHeader(event.name, event.filename, event.content_type)

    async def iter_data(self) -> AsyncIterator[bytes]:
        """The payload of the current part, piece by piece, as it arrives."""
        while self._in_part:
            event = await self._event()
            if event is None:
                self._in_part = False
            elif event is _END:
                raise malformed(ValueError("body ended inside a part"))
            else:
                assert isinstance(event, bytes)
                yield event

    async def read_value(self, limit: int = MAX_FIELD_BYTES) -> str:
        """The whole (small) payload of the current part, decoded as UTF-8."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.iter_data():
            size += len(chunk)
            if size > limit:
                raise errors.BAD_REQUEST(f"form field larger than {limit} bytes")
            chunks.append(chunk)
        try:
            return b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise errors.BAD_REQUEST("form field is not valid UTF-8") from None

    async def _expect_end(self) -> None:
        """Consume the rest of the body (an epilogue) so length checks still run."""
        async for _ in self._pieces:
            pass


class _EndMarker:
    pass


_END = _EndMarker()
