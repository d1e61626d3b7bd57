"""BlockEncoder: digests of the original and stored bytes, in-loop or in a worker thread."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.pipeline.codecs import CompressionCodec, ZstdCodec, build_codecs
from ingester_gateway.pipeline.encode import THREAD_MIN_BYTES, BlockEncoder
from tests.kit import decompress, sha256_hex

CODECS = build_codecs()


class CountingExecutor(Executor):
    def __init__(self) -> None:
        self.inner = ThreadPoolExecutor(max_workers=2)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return self.inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.inner.shutdown(wait, cancel_futures=cancel_futures)


async def encode_all(encoder: BlockEncoder, blocks: list[bytes]) -> bytes:
    out = [await encoder.submit(block) for block in blocks]
    out.append(encoder.finish())
    return b"".join(out)


def check(codec: CompressionCodec, blocks: list[bytes], executor: Executor | None) -> BlockEncoder:
    encoder = BlockEncoder(codec, executor)
    stored = asyncio.run(encode_all(encoder, blocks))
    original = b"".join(blocks)
    assert decompress(codec.name, stored) == original
    assert encoder.original_hex == sha256_hex(original)
    assert encoder.original_digest == hashlib.sha256(original).digest()
    assert encoder.stored_hex == sha256_hex(stored)
    assert (encoder.original_size, encoder.stored_size) == (len(original), len(stored))
    return encoder


@pytest.mark.parametrize("name", sorted(CODECS))
@given(blocks=st.lists(st.binary(max_size=3000), max_size=8))
def test_digests_of_original_and_stored_bytes_are_right(name: str, blocks: list[bytes]) -> None:
    check(CODECS[name], blocks, None)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_large_blocks_are_encoded_in_the_executor(name: str) -> None:
    """One job per large block for pass-through (the hash); two when compressing: the
    original's hash and the compression run side by side."""
    executor = CountingExecutor()
    try:
        big = bytes(range(256)) * (THREAD_MIN_BYTES // 256 + 1)
        check(CODECS[name], [big, b"small tail", big], executor)
        assert executor.submitted == (2 if name == "none" else 4)
    finally:
        executor.shutdown()


def test_zstd_contexts_are_reused_after_a_stream_is_closed() -> None:
    codec = ZstdCodec(3)
    first = codec.compressor()
    first.compress(b"x" * 1000)
    first.flush()
    first.close()
    assert len(codec._pool) == 1
    second = codec.compressor(size_hint=5)
    assert codec._pool == []
    out = second.compress(b"hello") + second.flush()
    second.close()
    assert zstandard.ZstdDecompressor().decompress(out) == b"hello"
    assert zstandard.frame_content_size(out) == 5  # the known size is in the frame header


def test_auto_zstd_threads_spread_only_when_allowed() -> None:
    codec = ZstdCodec(3, threads=-1)
    assert codec.workers(parallel=False) == 0
    assert codec.workers(parallel=True) >= 1
    assert ZstdCodec(3, threads=3).workers(parallel=False) == 3
    stream = codec.compressor(parallel=True)
    out = stream.compress(b"y" * 100_000) + stream.flush()
    stream.close()
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out) == b"y" * 100_000


def test_small_blocks_stay_on_the_loop_even_with_an_executor() -> None:
    executor = CountingExecutor()
    try:
        check(CODECS["zstd"], [b"a" * 100, b"b" * 100], executor)
        assert executor.submitted == 0
    finally:
        executor.shutdown()


def test_for_none_the_stored_digest_is_the_original_digest() -> None:
    encoder = check(CODECS["none"], [b"abc", b"def" * 1000], None)
    assert encoder.stored_hex == encoder.original_hex
    assert encoder.stored_size == encoder.original_size


def test_for_none_blocks_pass_through_uncopied() -> None:
    encoder = BlockEncoder(CODECS["none"])
    block = b"x" * 5000
    assert encoder.encode(block) is block


def test_an_empty_upload_has_the_digest_of_nothing() -> None:
    for codec in CODECS.values():
        encoder = check(codec, [], None)
        assert encoder.original_hex == sha256_hex(b"")
