"""The multipart/form-data body of one upload to a Storage Element, written by hand so
the file part can be streamed as it is produced. Pure: bytes in, bytes out.

    preamble   control fields, then the file part's header
    (file data, streamed)
    closing    the file part's end, fields known only at the end, the closing boundary

The closing boundary commits the upload on the SE, so it goes out only once the whole
body has been read and checked.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

Field = tuple[str, str]


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")


# One boundary per process: 128 random bits no client ever sees, so none can put it in
# its data; the field headers built on it are then made once, not for every upload.
PROCESS_BOUNDARY = "ingester-" + secrets.token_hex(16)
_FIELD_HEADS: dict[str, bytes] = {}  # field name -> its head, on PROCESS_BOUNDARY


class SeForm:
    def __init__(self, boundary: str = PROCESS_BOUNDARY) -> None:
        self.boundary = boundary
        self.content_type = f"multipart/form-data; boundary={boundary}"

    def field(self, name: str, value: str) -> bytes:
        head = _FIELD_HEADS.get(name) if self.boundary is PROCESS_BOUNDARY else None
        if head is None:
            head = (
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"'
                "\r\n\r\n"
            ).encode()
            if self.boundary is PROCESS_BOUNDARY:
                _FIELD_HEADS[name] = head
        return head + value.encode() + b"\r\n"

    def preamble(self, fields: Iterable[Field], filename: str, content_type: str) -> bytes:
        return b"".join(
            [
                *(self.field(name, value) for name, value in fields),
                (
                    f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
                    f'filename="{_quote(filename)}"\r\nContent-Type: {content_type}\r\n\r\n'
                ).encode(),
            ]
        )

    def closing(self, fields: Iterable[Field] = ()) -> bytes:
        return (
            b"".join([b"\r\n", *(self.field(name, value) for name, value in fields)])
            + f"--{self.boundary}--\r\n".encode()
        )
