"""Upload payloads, written once per run to tmpfs so that curl reads them from memory
and no generator sits in the measured path.

- `random`: os.urandom bytes (incompressible): the pass-through figures.
- `text`: log-like lines drawn at random from a pool of ~100k distinct lines (random
  IPs, paths, statuses, sizes, latencies, request ids): compressible like real logs,
  not a run of identical bytes; zstd level 3 makes it ~3-4x smaller.
- `multipart(dataset)`: the same bytes wrapped as one `file` part of a
  multipart/form-data body, for the Storage Element's upload route.

The sha256 of each payload is computed while it is written; the CPU time of that
hashing gives the "bare hashlib.sha256" cost per GiB on this machine.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 4 * 2**20


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    size: int  # payload bytes (without multipart framing)
    sha256: str  # of the payload
    content_type: str
    sha256_cpu_s: float  # thread CPU seconds spent hashing it (bare hashlib)
    seconds_to_make: float


@dataclass(frozen=True)
class MultipartBody:
    payload: Dataset
    path: Path
    content_type: str  # multipart/form-data; boundary=...
    size: int  # whole body


def _write(
    path: Path, size: int, blocks: Iterator[bytes], name: str, content_type: str, started: float
) -> Dataset:
    sha = hashlib.sha256()
    hash_cpu = 0.0
    written = 0
    with open(path, "wb") as out:
        for block in blocks:
            piece = block[: size - written]
            t0 = time.thread_time()
            sha.update(piece)
            hash_cpu += time.thread_time() - t0
            out.write(piece)
            written += len(piece)
            if written >= size:
                break
    if written != size:
        raise RuntimeError(f"{name}: wrote {written} of {size} bytes")
    return Dataset(
        name, path, size, sha.hexdigest(), content_type, hash_cpu, time.perf_counter() - started
    )


def _random_blocks() -> Iterator[bytes]:
    while True:
        yield os.urandom(BLOCK)


_METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD"]
_LEVELS = ["INFO"] * 8 + ["WARN", "ERROR", "DEBUG"]
_SERVICES = ["ingester", "query", "admin", "storage-1", "storage-2", "auth", "gc"]
_WORDS = [
    *("api", "v1", "files", "upload", "download", "metadata", "users", "tokens", "health"),
    *("ready", "metrics", "archive", "2024", "2025", "reports", "invoices", "scans"),
    *("photos", "backup", "tmp", "search", "index", "shards", "items"),
]
_AGENTS = ["curl/8.5.0", "python-httpx/0.27", "Mozilla/5.0", "tus-js-client/4.1", "Go-http"]


def _log_pool(rng: random.Random, count: int) -> list[bytes]:
    t = 1_735_689_600.0
    lines = []
    for _ in range(count):
        t += rng.expovariate(50.0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
        path = "/" + "/".join(rng.choices(_WORDS, k=rng.randint(2, 5)))
        ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        status = rng.choice((200, 200, 200, 201, 204, 301, 304, 400, 401, 404, 500, 503))
        lines.append(
            (
                f"{stamp} {rng.choice(_LEVELS)} [{rng.choice(_SERVICES)}] {ip} "
                f'"{rng.choice(_METHODS)} {path} HTTP/1.1" {status} {rng.randint(0, 10**7)} '
                f"{rng.random() * 900:.3f}ms req={rng.getrandbits(64):016x} "
                f'ua="{rng.choice(_AGENTS)}"\n'
            ).encode()
        )
    return lines


def _text_blocks(seed: int = 1234) -> Iterator[bytes]:
    rng = random.Random(seed)
    pool = _log_pool(rng, 100_000)
    per_block = BLOCK // (sum(len(x) for x in pool[:1000]) // 1000)
    while True:
        yield b"".join(rng.choices(pool, k=per_block))


class Datasets:
    """Payloads of one size, made on first use in `directory` (on tmpfs)."""

    def __init__(self, directory: Path, size: int) -> None:
        self.directory = directory
        self.size = size
        self._made: dict[str, Dataset] = {}
        self._multipart: dict[str, MultipartBody] = {}

    def random(self) -> Dataset:
        if "random" not in self._made:
            started = time.perf_counter()
            self._made["random"] = _write(
                self.directory / "random.bin",
                self.size,
                _random_blocks(),
                "random",
                "application/octet-stream",
                started,
            )
        return self._made["random"]

    def text(self) -> Dataset:
        if "text" not in self._made:
            started = time.perf_counter()
            self._made["text"] = _write(
                self.directory / "text.log",
                self.size,
                _text_blocks(),
                "text",
                "text/plain",
                started,
            )
        return self._made["text"]

    def multipart(
        self, payload: Dataset, filename: str = "x", fields: dict[str, str] | None = None
    ) -> MultipartBody:
        """`payload` as the `file` part of a form, as `curl -F file=@...;filename=x` sends it,
        after the text `fields` (control fields come before the file)."""
        fields = fields or {}
        cache_key = payload.name + "".join(f"&{k}={v}" for k, v in fields.items())
        if cache_key not in self._multipart:
            boundary = "------------------------benchBoundary" + os.urandom(8).hex()
            head = "".join(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                for name, value in fields.items()
            )
            head += (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                f"Content-Type: {payload.content_type}\r\n\r\n"
            )
            tail = f"\r\n--{boundary}--\r\n".encode()
            suffix = f".{len(self._multipart)}" if fields else ""
            path = self.directory / f"{payload.path.name}{suffix}.multipart"
            with open(path, "wb") as out, open(payload.path, "rb") as src:
                out.write(head.encode())
                shutil.copyfileobj(src, out, BLOCK)
                out.write(tail)
            self._multipart[cache_key] = MultipartBody(
                payload,
                path,
                f"multipart/form-data; boundary={boundary}",
                len(head.encode()) + payload.size + len(tail),
            )
        return self._multipart[cache_key]

    def made(self) -> list[Dataset]:
        return list(self._made.values())

    def remove(self) -> None:
        for item in [*self._made.values(), *self._multipart.values()]:
            item.path.unlink(missing_ok=True)
        self._made.clear()
        self._multipart.clear()
