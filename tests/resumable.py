"""The tests' client of resumable uploads (tus 1.0 and the IETF draft) over plain HTTP:
creation, appends (whole, cut mid-body by closing the socket, chunked with a trailer),
offset reads, and waiting until an upload is stored. No server is started here
(`tests/stack.py` does that); real clients (tuspy) are used by the tests themselves.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import time
from collections.abc import Mapping
from typing import Any

from tests.kit import Answer, Served, base_url, http_call

TUS = "/api/v1/tus/"
TUS_VERSION = {"Tus-Resumable": "1.0.0"}
IETF = {"Upload-Draft-Interop-Version": "8"}
OFFSET_STREAM = {"Content-Type": "application/offset+octet-stream"}
PARTIAL_UPLOAD = {"Content-Type": "application/partial-upload"}


def metadata(fields: Mapping[str, str]) -> str:
    """tus `Upload-Metadata` of `fields`."""
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())


def create(
    gw: str | Served,
    auth: Mapping[str, str],
    length: int | None,
    fields: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """A tus upload of `length` bytes (None: deferred); its path."""
    sent = {**TUS_VERSION, **auth, **(headers or {})}
    if length is None:
        sent["Upload-Defer-Length"] = "1"
    else:
        sent["Upload-Length"] = str(length)
    if fields:
        sent["Upload-Metadata"] = metadata(fields)
    answer = http_call(gw, "POST", TUS, b"", sent)
    assert answer.status == 201, (answer.status, answer.body)
    location = answer.headers["location"]
    assert location.startswith(TUS), location
    return location


def patch(
    gw: str | Served,
    auth: Mapping[str, str],
    path: str,
    offset: int,
    data: bytes,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """A tus PATCH of `data` at `offset`."""
    sent = {**TUS_VERSION, **OFFSET_STREAM, **auth, "Upload-Offset": str(offset)}
    return http_call(gw, "PATCH", path, data, {**sent, **(headers or {})})


def head(gw: str | Served, auth: Mapping[str, str], path: str, ietf: bool = False) -> Answer:
    return http_call(gw, "HEAD", path, None, {**(IETF if ietf else TUS_VERSION), **auth})


def offset_of(gw: str | Served, auth: Mapping[str, str], path: str, ietf: bool = False) -> int:
    answer = head(gw, auth, path, ietf)
    assert answer.status in (200, 204), (answer.status, answer.headers)
    return int(answer.headers["upload-offset"])


def _connect(gw: str | Served) -> socket.socket:
    host, _, port = base_url(gw).removeprefix("http://").partition(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _head_block(method: str, path: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send_cut(
    gw: str | Served,
    method: str,
    path: str,
    headers: Mapping[str, str],
    data: bytes,
    cut: int,
    linger: float = 0.2,
) -> None:
    """A request that declares `data` (Content-Length) but sends its first `cut` bytes,
    then closes the connection: a client whose network failed mid-body."""
    with contextlib.closing(_connect(gw)) as sock:
        sock.sendall(_head_block(method, path, {**headers, "Content-Length": str(len(data))}))
        sock.sendall(data[:cut])
        time.sleep(linger)  # the bytes are on their way before the FIN


def send_chunked(
    gw: str | Served,
    method: str,
    path: str,
    headers: Mapping[str, str],
    data: bytes,
    trailers: Mapping[str, str],
    chunk: int = 65536,
) -> Answer:
    """A chunked request with trailer fields after its data (tus checksum-trailer,
    RFC 9530 digests in trailers); the answer."""
    sent = {**headers, "Transfer-Encoding": "chunked", "Trailer": ", ".join(trailers)}
    body = [_head_block(method, path, sent)]
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        body.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    body.append(b"0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in trailers.items()).encode())
    body.append(b"\r\n")
    with contextlib.closing(_connect(gw)) as sock:
        sock.sendall(b"".join(body))
        return read_answer(sock)


def read_answer(sock: socket.socket) -> Answer:
    raw = b""
    while b"\r\n\r\n" not in raw:
        piece = sock.recv(65536)
        if not piece:
            break
        raw += piece
    head_part, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = head_part.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return Answer(int(status_line.split()[1]), headers, rest[:length])


def status(gw: str | Served, auth: Mapping[str, str], path: str) -> dict[str, Any]:
    """`GET` on the upload: its JSON state."""
    answer = http_call(gw, "GET", path, None, {**TUS_VERSION, **auth})
    assert answer.status == 200, (answer.status, answer.body)
    return dict(answer.json())


def wait_stored(
    gw: str | Served, auth: Mapping[str, str], path: str, timeout: float = 90.0
) -> dict[str, Any]:
    """The upload's state once it is stored (or failed, which fails the test)."""
    deadline = time.monotonic() + timeout
    while True:
        state = status(gw, auth, path)
        if state["state"] == "stored":
            return state
        assert state["state"] != "failed", state
        assert time.monotonic() < deadline, f"not stored within {timeout:g} s: {state}"
        time.sleep(0.1)
