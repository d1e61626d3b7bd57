"""Each codec's incremental compressor round-trips any bytes in any block split."""

from __future__ import annotations

import random
import zlib

import brotli
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingester_gateway.pipeline.codecs import (
    EXTENSIONS,
    BrotliCodec,
    CompressionCodec,
    GzipCodec,
    IdentityCodec,
    ZstdCodec,
    build_codecs,
)
from tests.kit import decompress, split_at


def compress_blocks(codec: CompressionCodec, blocks: list[bytes]) -> bytes:
    compressor = codec.compressor()
    out = [compressor.compress(block) for block in blocks]
    out.append(compressor.flush())
    return b"".join(out)


CODECS = [ZstdCodec(level=3), BrotliCodec(quality=4), GzipCodec(level=6), IdentityCodec()]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@given(data=st.binary(max_size=20_000), cuts=st.lists(st.integers(0, 20_000), max_size=20))
def test_any_bytes_in_any_block_split_round_trip(
    codec: CompressionCodec, data: bytes, cuts: list[int]
) -> None:
    stored = compress_blocks(codec, split_at(data, cuts))
    assert decompress(codec.name, stored) == data


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_an_empty_stream_round_trips(codec: CompressionCodec) -> None:
    assert decompress(codec.name, compress_blocks(codec, [])) == b""


def test_gzip_output_is_a_gzip_container_zlib_can_read() -> None:
    stored = compress_blocks(GzipCodec(), [b"hello " * 100])
    assert stored[:2] == b"\x1f\x8b"
    assert zlib.decompress(stored, 31) == b"hello " * 100


def test_zstd_output_is_a_zstd_frame() -> None:
    stored = compress_blocks(ZstdCodec(), [b"hello " * 100])
    assert stored[:4] == b"\x28\xb5\x2f\xfd"


@pytest.mark.parametrize("codec", CODECS[:3], ids=lambda c: c.name)
def test_compressible_data_shrinks(codec: CompressionCodec) -> None:
    data = b"artStore archive line\n" * 5000
    assert len(compress_blocks(codec, [data])) < len(data) // 10


def test_identity_returns_the_very_same_object() -> None:
    compressor = IdentityCodec().compressor()
    block = b"x" * 1000
    assert compressor.compress(block) is block
    assert compressor.flush() == b""


def test_each_compressor_is_independent() -> None:
    """Two uploads with the same codec never share compressor state."""
    codec = ZstdCodec()
    first, second = codec.compressor(), codec.compressor()
    a = first.compress(b"a" * 1000) + first.flush()
    b = second.compress(b"b" * 1000) + second.flush()
    assert decompress("zstd", a) == b"a" * 1000
    assert decompress("zstd", b) == b"b" * 1000


def test_build_codecs_names_each_codec_by_its_key() -> None:
    codecs = build_codecs(zstd_level=5, brotli_quality=2, gzip_level=1)
    assert sorted(codecs) == ["brotli", "gzip", "none", "zstd"]
    assert all(codec.name == key for key, codec in codecs.items())
    assert EXTENSIONS["none"] == ""
    assert {EXTENSIONS[n] for n in ("zstd", "brotli", "gzip")} == {".zst", ".br", ".gz"}


def test_a_short_first_block_does_not_cost_brotli_its_ratio() -> None:
    """Brotli sizes its window from its first input; the gateway's first block is cut
    short (64 KiB), which used to shrink the ratio of the whole stream by a fifth."""
    rng = random.Random(7)
    words = [f"{rng.random():.6f}-{rng.randrange(10**6)}" for _ in range(4000)]
    text = " ".join(rng.choice(words) for _ in range(600_000)).encode()
    codec = BrotliCodec(4)

    def ratio(first: int) -> float:
        stream = codec.compressor()
        blocks = [text[:first]] + [text[i : i + 2**20] for i in range(first, len(text), 2**20)]
        stored = b"".join(stream.compress(b) for b in blocks) + stream.flush()
        assert brotli.decompress(stored) == text
        return len(text) / len(stored)

    assert ratio(64 * 1024) >= 0.98 * ratio(2**20)
