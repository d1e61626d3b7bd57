"""The raw-ASGI pieces the gateway and its reference servers share: one JSON answer,
and reading a small request body whole."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send


async def send_json(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """A complete JSON response: `body` is already encoded."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_small_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body of a small (JSON) request; None once it passes `limit`
    bytes, and b"" when the client went away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def query_of(scope: Scope) -> dict[str, str]:
    """The request's query parameters (the last of a repeated name wins)."""
    return dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
