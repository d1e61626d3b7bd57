"""Checking a 201 answer against the Storage Element: what it holds decodes to the original.

Shared by the upload, property and nginx tests. Big objects are checked by streaming
the download through the codec's decompressor into a sha256, never held twice.
"""

from __future__ import annotations

import hashlib
import json
import random
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import brotli
import zstandard

from tests.conftest import Stack

CODECS = ("zstd", "brotli", "gzip", "none")


def decompressor(algorithm: str) -> Callable[[bytes], bytes]:
    """An incremental decoder for the stored bytes of `algorithm` (feed b"" to finish)."""
    if algorithm == "zstd":
        obj = zstandard.ZstdDecompressor().decompressobj()
        return lambda chunk: obj.decompress(chunk) if chunk else b""
    if algorithm == "brotli":
        br = brotli.Decompressor()
        return lambda chunk: br.process(chunk) if chunk else b""
    if algorithm == "gzip":
        gz = zlib.decompressobj(31)
        return lambda chunk: gz.decompress(chunk) if chunk else gz.flush()
    if algorithm == "none":
        return lambda chunk: chunk
    raise AssertionError(f"unknown compression_algorithm {algorithm!r}")


def decode(algorithm: str, stored: bytes) -> bytes:
    step = decompressor(algorithm)
    return step(stored) + step(b"")


def assert_stored(stack: Stack, result: dict[str, Any], original: bytes) -> bytes:
    """The SE holds `stored_checksum`/`stored_size` bytes that decode to `original`;
    returns the stored bytes."""
    stored = stack.download(result["file_id"])
    assert_result_matches(result, original, stored)
    return stored


def assert_result_matches(result: dict[str, Any], original: bytes, stored: bytes) -> None:
    algorithm = result["compression_algorithm"]
    assert decode(algorithm, stored) == original
    assert result["checksum"] == hashlib.sha256(original).hexdigest()
    assert result["stored_checksum"] == hashlib.sha256(stored).hexdigest()
    assert result["file_size"] == len(original)
    assert result["stored_size"] == len(stored)
    assert result["compressed"] is (algorithm != "none")
    if algorithm == "none":
        assert stored == original


def stream_stored_digests(stack: Stack, file_id: str, algorithm: str) -> tuple[str, str, int, int]:
    """sha256 of the stored bytes and of their decoding, and both sizes, streamed."""
    request = urllib.request.Request(
        f"{stack.se.url}/api/v1/files/{file_id}/download", headers=stack.keys.auth()
    )
    stored_hash, original_hash = hashlib.sha256(), hashlib.sha256()
    stored_size = original_size = 0
    step = decompressor(algorithm)
    with urllib.request.urlopen(request, timeout=120) as resp:
        while chunk := resp.read(1 << 20):
            stored_hash.update(chunk)
            stored_size += len(chunk)
            out = step(chunk)
            original_hash.update(out)
            original_size += len(out)
    tail = step(b"")
    original_hash.update(tail)
    original_size += len(tail)
    return stored_hash.hexdigest(), original_hash.hexdigest(), stored_size, original_size


def se_metadata(stack: Stack, file_id: str) -> dict[str, Any]:
    """What the SE recorded for a file (`GET /api/v1/files/{id}`)."""
    request = urllib.request.Request(
        f"{stack.se.url}/api/v1/files/{file_id}", headers=stack.keys.auth()
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def pseudo_random_blocks(seed: int, total: int, block: int = 1 << 20) -> Iterator[bytes]:
    """`total` reproducible random bytes, one block at a time."""
    rng = random.Random(seed)
    left = total
    while left > 0:
        size = min(block, left)
        yield rng.randbytes(size)
        left -= size
