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


class SeForm:
    def __init__(self, boundary: str | None = None) -> None:
        self.boundary = boundary or "ingester-" + secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"

    def field(self, name: str, value: str) -> bytes:
        return (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"'
            f"\r\n\r\n{value}\r\n"
        ).encode()

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
