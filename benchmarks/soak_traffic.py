"""The soak's clients (`soak.py`): uploads of every kind the gateway takes — raw PUT
(Content-Length or chunked), multipart POST, tus — from clients that behave and from
clients that do not (vanishing mid-body, slow, stalled past the body timeout), each
ending in one `Outcome`:

- `ok`: a 201 whose `checksum` and `file_size` are those of the bytes sent (tus: the
  upload reached `stored` and its result says so);
- `refused`: a 4xx or a 503 in the gateway's JSON error envelope (`{"error": {"code",
  "message", "request_id"}}`) — a clean no;
- `failed`: anything else — a 5xx other than 503, a 201 that names other bytes, no
  envelope, a connection the gateway dropped, no answer within the deadline (a hang);
- `abandoned`: the client left on purpose (cut its connection mid-body, terminated its
  tus upload); nothing is expected of the gateway but to store nothing.

Bytes come from two buffers made once (random, and log-like text that compresses),
each upload a slice with a unique 16-byte tag in front; their sha256 is what the 201
must name. Vanishing, slow and stalled clients use plain sockets of their own, so
exactly the bytes chosen reach the gateway before the connection closes or goes quiet
(aiohttp holds a request's head back until its first body byte); the rest use aiohttp
on keep-alive connections, as real clients do."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

KiB = 2**10
MiB = 2**20
TUS = "/api/v1/tus/"
TUS_VERSION = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"
ANSWER_DEADLINE = 120.0  # seconds for any one answer: no answer by then is a hang
STORE_DEADLINE = 120.0  # seconds a complete tus upload has to reach `stored`
TAG = 16  # bytes of per-upload tag in front of every payload

# kind -> weight: how often each kind of client comes along
KINDS: dict[str, float] = {
    "raw": 22,  # PUT, Content-Length
    "raw-chunked": 12,  # PUT, Transfer-Encoding: chunked
    "multipart": 22,  # POST /api/v1/files/upload, fields then the file
    "tus": 14,  # creation, 1-4 PATCHes, then wait for `stored`
    "tus-cut": 6,  # one PATCH cut mid-body, HEAD, resume
    "tus-terminated": 2,  # creation, part of it, DELETE
    "vanish": 10,  # raw or multipart, the connection closed (FIN or RST) mid-body
    "slow": 7,  # chunked at ~256 KiB/s with pauses, under the body timeout
    "stalled": 2,  # half the body, then silence past the body timeout: 408
    "empty": 3,  # a 0-byte file, which artStore cannot register: 400
}
# (weight, smallest, largest) of the upload sizes, drawn log-uniformly within a class
SIZE_CLASSES: tuple[tuple[float, int, int], ...] = (
    (25, 1, KiB),
    (35, KiB, 64 * KiB),
    (25, 64 * KiB, MiB),
    (12, MiB, 8 * MiB),
    (3, 8 * MiB, 40 * MiB),
)
SLOW_MAX = 512 * KiB
SLOW_RATE = 256 * KiB  # bytes/s of a slow client
SLOW_PIECE = 8 * KiB


@dataclass
class Outcome:
    kind: str
    size: int
    result: str  # ok | refused | failed | abandoned
    seconds: float  # first byte out to the answer (tus: creation to `stored`)
    status: int | None = None
    code: str | None = None  # the refusal's error code, or why it failed
    file_id: str | None = None
    element_id: str | None = None
    at: float = 0.0  # seconds since the soak began, when the upload started


def draw_size(rng: random.Random, max_size: int) -> int:
    """An upload size from SIZE_CLASSES, none above `max_size`."""
    classes = [(w, lo, min(hi, max_size)) for w, lo, hi in SIZE_CLASSES if lo <= max_size]
    _, lo, hi = rng.choices(classes, weights=[w for w, _, _ in classes])[0]
    return max(1, round(math.exp(rng.uniform(math.log(lo), math.log(max(lo, hi))))))


class Payloads:
    """Slices of one random and one text buffer; each with a tag of its own in front."""

    def __init__(self, max_size: int, seed: int) -> None:
        span = max_size + MiB
        self.random = os.urandom(span)
        rng = random.Random(seed)
        levels = ("INFO", "WARN", "DEBUG", "ERROR")
        lines = []
        total = 0
        n = 0
        while total < span:
            line = (
                f"2026-01-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z {levels[n % 4]} "
                f"svc-{rng.randrange(40)} request {rng.getrandbits(48):012x} took "
                f"{rng.randrange(2000)} ms path=/api/v{n % 3}/items/{rng.randrange(10**6)}\n"
            )
            lines.append(line)
            total += len(line)
            n += 1
        self.text = "".join(lines).encode()[:span]
        self._count = 0

    def make(self, rng: random.Random, size: int) -> tuple[bytes, str]:
        """`size` bytes (unique per call) and their sha256."""
        self._count += 1
        source = self.text if rng.random() < 0.5 else self.random
        tag = f"{self._count:08d}{rng.getrandbits(32):08x}".encode()[:TAG]
        if size <= TAG:
            data = tag[:size]
        else:
            start = rng.randrange(len(source) - size + TAG + 1)
            data = tag + source[start : start + size - TAG]
        return data, hashlib.sha256(data).hexdigest()


class Pace:
    """Caps the bytes offered per second over all clients (tmpfs holds what is stored)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = time.monotonic()

    async def take(self, size: int) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + size / self.rate
        if start > now:
            await asyncio.sleep(start - now)


def judge_answer(status: int, headers: Mapping[str, str], body: bytes) -> tuple[str, str | None]:
    """A non-201 answer: ("refused", code) for a 4xx or a 503 in the JSON envelope, else
    ("failed", what it was)."""
    envelope = _envelope(headers, body)
    if envelope is not None and (400 <= status < 500 or status == 503):
        return "refused", envelope
    shown = envelope or body[:120].decode("utf-8", "replace")
    return "failed", f"{status} {shown}"


def _envelope(headers: Mapping[str, str], body: bytes) -> str | None:
    """The error code of a gateway error envelope; None when the body is not one."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if not content_type.startswith("application/json"):
        return None
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict) or set(error) != {"code", "message", "request_id"}:
        return None
    return str(error["code"])


def judge_stored(reply: Any, size: int, digest: str) -> tuple[str, str | None]:
    """A 201 body (or a tus result): ("ok", None) when it names the bytes sent."""
    if not isinstance(reply, dict):
        return "failed", "201 without a JSON object"
    if reply.get("checksum") != digest:
        return "failed", "201 with another checksum"
    if reply.get("file_size") != size:
        return "failed", f"201 with file_size {reply.get('file_size')} for {size}"
    if not reply.get("file_id"):
        return "failed", "201 without file_id"
    return "ok", None


def judged(
    kind: str,
    size: int,
    digest: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    started: float,
) -> Outcome:
    """The outcome of an upload answered `status` with `body`."""
    seconds = time.monotonic() - started
    if status != 201:
        result, code = judge_answer(status, headers, body)
        return Outcome(kind, size, result, seconds, status, code)
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    result, code = judge_stored(reply, size, digest)
    stored = reply if isinstance(reply, dict) else {}
    return Outcome(
        kind,
        size,
        result,
        seconds,
        201,
        code,
        file_id=stored.get("file_id"),
        element_id=stored.get("storage_element_id"),
    )


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length body (what the gateway sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def request_head(method: str, path: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(data: bytes, piece: int = 64 * KiB) -> bytes:
    """`data` in chunked transfer coding, with the last chunk."""
    out = [
        f"{len(data[i : i + piece]):x}\r\n".encode() + data[i : i + piece] + b"\r\n"
        for i in range(0, len(data), piece)
    ]
    return b"".join([*out, b"0\r\n\r\n"])


def multipart(fields: Mapping[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    """A form: the control fields, then the `file` part; the body and its content type."""
    boundary = f"soak{os.urandom(12).hex()}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
    )
    body = b"".join([*parts, data, f"\r\n--{boundary}--\r\n".encode()])
    return body, f"multipart/form-data; boundary={boundary}"


class Client:
    """One user of the gateway (a token of its own) sending one upload after another."""

    def __init__(
        self,
        number: int,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        payloads: Payloads,
        body_timeout: float,
        seed: int,
    ) -> None:
        self.number = number
        self.session = session
        self.base = base_url.rstrip("/")
        host, _, port = self.base.removeprefix("http://").partition(":")
        self.address = (host, int(port))
        self.auth = {"Authorization": f"Bearer {token}"}
        self.payloads = payloads
        self.body_timeout = body_timeout
        self.rng = random.Random(seed)
        self._sent = 0

    def name(self, ext: str = "bin") -> str:
        self._sent += 1
        return f"soak-{self.number:02d}-{self._sent:05d}.{ext}"

    async def upload(self, kind: str, size: int) -> Outcome:
        """One upload of `kind` and (about) `size` bytes, judged."""
        started = time.monotonic()
        run = {
            "raw": self._raw,
            "raw-chunked": self._raw,
            "multipart": self._multipart,
            "tus": self._tus,
            "tus-cut": self._tus,
            "tus-terminated": self._tus,
            "vanish": self._vanish,
            "slow": self._slow,
            "stalled": self._stalled,
            "empty": self._empty,
        }[kind]
        try:
            outcome = await asyncio.wait_for(run(kind, size), ANSWER_DEADLINE + STORE_DEADLINE)
        except TimeoutError:
            outcome = Outcome(kind, size, "failed", 0.0, code="no answer (hang)")
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            outcome = Outcome(kind, size, "failed", 0.0, code=f"{type(exc).__name__}: {exc}")
        if not outcome.seconds:
            outcome.seconds = time.monotonic() - started
        return outcome

    # -- well-behaved clients --------------------------------------------------------

    def _query(self, size: int) -> str:
        """Upload options as a client might choose them (brotli only for small files)."""
        roll = self.rng.random()
        if roll < 0.15:
            return "?compression_algorithm=none"
        if roll < 0.25:
            return "?compression_algorithm=gzip"
        if roll < 0.30 and size <= MiB:
            return "?compression_algorithm=brotli"
        return ""

    async def _raw(self, kind: str, size: int) -> Outcome:
        data, digest = self.payloads.make(self.rng, size)
        body: Any = data if kind == "raw" else _pieces(data, 256 * KiB)
        url = f"{self.base}/api/v1/files/{self.name()}{self._query(size)}"
        started = time.monotonic()
        async with self.session.put(url, data=body, headers=self.auth) as resp:
            return await self._judge(kind, size, digest, resp, started)

    async def _multipart(self, kind: str, size: int) -> Outcome:
        data, digest = self.payloads.make(self.rng, size)
        fields = {"description": f"soak upload of {size} bytes"}
        if self.rng.random() < 0.3:
            fields["compression_algorithm"] = self.rng.choice(["none", "zstd", "gzip"])
        if self.rng.random() < 0.3:
            fields["metadata"] = json.dumps({"soak": True, "client": self.number})
        body, content_type = multipart(fields, self.name(), data)
        headers = {**self.auth, "Content-Type": content_type}
        started = time.monotonic()
        sent: Any = body if self.rng.random() < 0.7 else _pieces(body, 128 * KiB)
        async with self.session.post(
            f"{self.base}/api/v1/files/upload", data=sent, headers=headers
        ) as resp:
            return await self._judge(kind, size, digest, resp, started)

    async def _judge(
        self, kind: str, size: int, digest: str, resp: aiohttp.ClientResponse, started: float
    ) -> Outcome:
        body = await resp.read()
        return judged(kind, size, digest, resp.status, resp.headers, body, started)

    async def _empty(self, kind: str, size: int) -> Outcome:
        url = f"{self.base}/api/v1/files/{self.name('txt')}"
        started = time.monotonic()
        async with self.session.put(url, data=b"", headers=self.auth) as resp:
            return await self._judge(kind, 0, hashlib.sha256(b"").hexdigest(), resp, started)

    # -- tus -------------------------------------------------------------------------

    async def _tus(self, kind: str, size: int) -> Outcome:
        data, digest = self.payloads.make(self.rng, size)
        started = time.monotonic()
        name = base64.b64encode(self.name().encode()).decode()
        headers = {**TUS_VERSION, **self.auth, "Upload-Length": str(size)}
        headers["Upload-Metadata"] = f"filename {name}"
        async with self.session.post(self.base + TUS, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 201:
                result, code = judge_answer(resp.status, resp.headers, body)
                return Outcome(kind, size, result, 0.0, resp.status, code)
            path = resp.headers["Location"].removeprefix(self.base)
        ends = sorted(
            {size, *(self.rng.randrange(1, size + 1) for _ in range(self.rng.randrange(4)))}
        )
        offset = 0
        if kind == "tus-cut" and size > 1:
            cut = self.rng.randrange(1, size)
            await self._tus_cut(path, data, cut)
            offset = await self._tus_offset(path)
        for end in ends:
            if kind == "tus-terminated" and end == ends[-1]:
                return await self._tus_terminate(kind, size, path)
            if end <= offset:
                continue
            outcome = await self._tus_patch(kind, size, path, data, offset, end)
            if outcome is not None:
                return outcome
            offset = end
        return await self._tus_stored(kind, size, path, digest, started)

    async def _tus_patch(
        self, kind: str, size: int, path: str, data: bytes, offset: int, end: int
    ) -> Outcome | None:
        """Append data[offset:end], resuming from the server's offset when it differs;
        None once the server has it, else the outcome that ends the upload."""
        deadline = time.monotonic() + ANSWER_DEADLINE
        while True:
            headers = {
                **TUS_VERSION,
                **self.auth,
                "Content-Type": OFFSET_STREAM,
                "Upload-Offset": str(offset),
            }
            async with self.session.patch(
                self.base + path, data=data[offset:end], headers=headers
            ) as resp:
                body = await resp.read()
                if resp.status == 204 and int(resp.headers["Upload-Offset"]) == end:
                    return None
                retry = resp.status in (409, 423, 503) and time.monotonic() < deadline
                if not retry:
                    result, code = judge_answer(resp.status, resp.headers, body)
                    return Outcome(kind, size, result, 0.0, resp.status, code)
            await asyncio.sleep(0.2)
            offset = await self._tus_offset(path)
            if offset >= end:
                return None

    async def _tus_offset(self, path: str) -> int:
        async with self.session.head(self.base + path, headers={**TUS_VERSION, **self.auth}) as r:
            return int(r.headers["Upload-Offset"])

    async def _tus_cut(self, path: str, data: bytes, cut: int) -> None:
        """A PATCH of everything that sends `cut` bytes, then the connection closes."""
        offset = 0
        headers = {**TUS_VERSION, **self.auth, "Content-Type": OFFSET_STREAM}
        headers |= {"Upload-Offset": str(offset), "Content-Length": str(len(data))}
        _, writer = await asyncio.open_connection(*self.address)
        try:
            writer.write(request_head("PATCH", path, headers) + data[:cut])
            await writer.drain()
            await asyncio.sleep(0.05)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _tus_terminate(self, kind: str, size: int, path: str) -> Outcome:
        async with self.session.delete(
            self.base + path, headers={**TUS_VERSION, **self.auth}
        ) as resp:
            body = await resp.read()
            if resp.status == 204:
                return Outcome(kind, size, "abandoned", 0.0, 204)
            result, code = judge_answer(resp.status, resp.headers, body)
            return Outcome(kind, size, result, 0.0, resp.status, code)

    async def _tus_stored(
        self, kind: str, size: int, path: str, digest: str, started: float
    ) -> Outcome:
        deadline = time.monotonic() + STORE_DEADLINE
        while True:
            async with self.session.get(
                self.base + path, headers={**TUS_VERSION, **self.auth}
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    result, code = judge_answer(resp.status, resp.headers, body)
                    return Outcome(kind, size, "failed", 0.0, resp.status, f"status read: {code}")
                state = json.loads(body)
            if state["state"] == "stored":
                reply = state.get("result")
                result, code = judge_stored(reply, size, digest)
                return Outcome(
                    kind,
                    size,
                    result,
                    time.monotonic() - started,
                    201,
                    code,
                    file_id=reply.get("file_id") if isinstance(reply, dict) else None,
                    element_id=reply.get("storage_element_id") if isinstance(reply, dict) else None,
                )
            if state["state"] == "failed":
                return Outcome(kind, size, "failed", 0.0, 200, f"tus failed: {state.get('error')}")
            if time.monotonic() > deadline:
                return Outcome(kind, size, "failed", 0.0, 200, f"not stored: {state['state']}")
            await asyncio.sleep(0.1)

    # -- clients that misbehave ----------------------------------------------------------

    async def _vanish(self, kind: str, size: int) -> Outcome:
        """Raw (Content-Length or chunked) or multipart; the connection closes after a part
        of the body, with a FIN or a RST."""
        size = max(size, 2)
        data, _ = self.payloads.make(self.rng, size)
        form = self.rng.random() < 0.4
        headers = dict(self.auth)
        if form:
            body, content_type = multipart({}, self.name(), data)
            path = "/api/v1/files/upload"
            headers["Content-Type"] = content_type
            method = "POST"
        else:
            body, path, method = data, f"/api/v1/files/{self.name()}", "PUT"
        if self.rng.random() < 0.5:
            headers["Content-Length"] = str(len(body))
        else:
            headers["Transfer-Encoding"] = "chunked"
            body = chunked(body)[:-5]  # never the last chunk
        cut = self.rng.randrange(1, max(2, len(body) - 1))
        _, writer = await asyncio.open_connection(*self.address)
        try:
            writer.write(request_head(method, path, headers) + body[:cut])
            await writer.drain()
            await asyncio.sleep(self.rng.uniform(0.0, 0.3))
            if self.rng.random() < 0.5:  # RST instead of FIN
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return Outcome(kind, size, "abandoned", 0.0)

    async def _slow(self, kind: str, size: int) -> Outcome:
        """Chunked at SLOW_RATE on a connection of its own, the head sent at once, with
        one pause of up to half the body timeout (possibly before the first body byte)."""
        size = min(size, SLOW_MAX)
        data, digest = self.payloads.make(self.rng, size)
        pause_at = self.rng.randrange(size)
        pause = self.rng.uniform(0, self.body_timeout / 2)
        path = f"/api/v1/files/{self.name()}{self._query(size)}"
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(*self.address)
        try:
            writer.write(request_head("PUT", path, {**self.auth, "Transfer-Encoding": "chunked"}))
            await writer.drain()
            with contextlib.suppress(ConnectionError):  # answered early: read the answer
                for start in range(0, size, SLOW_PIECE):
                    if start <= pause_at < start + SLOW_PIECE:
                        await asyncio.sleep(pause)
                    writer.write(chunked(data[start : start + SLOW_PIECE])[:-5])
                    await writer.drain()
                    await asyncio.sleep(SLOW_PIECE / SLOW_RATE)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            status, headers, body = await asyncio.wait_for(read_answer(reader), ANSWER_DEADLINE)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return judged(kind, size, digest, status, headers, body, started)

    async def _stalled(self, kind: str, size: int) -> Outcome:
        """Content-Length, half the body, then nothing: the gateway's body timeout must
        answer (408 in the envelope) and close."""
        size = max(size, 2)
        data, _ = self.payloads.make(self.rng, size)
        headers = {**self.auth, "Content-Length": str(size)}
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(*self.address)
        try:
            writer.write(request_head("PUT", f"/api/v1/files/{self.name()}", headers))
            writer.write(data[: size // 2])
            await writer.drain()
            status, answer_headers, body = await asyncio.wait_for(
                read_answer(reader), self.body_timeout + ANSWER_DEADLINE
            )
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return judged(kind, size, "", status, answer_headers, body, started)


async def _pieces(data: bytes, piece: int) -> AsyncIterator[bytes]:
    """`data` as a chunked body (aiohttp sends an async iterator chunked)."""
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
