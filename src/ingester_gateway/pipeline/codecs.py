"""Compression codecs: one small Protocol, one class per algorithm.

All three libraries release the GIL on large buffers, so blocks can be compressed in
a worker thread while the event loop keeps moving bytes.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard

from ingester_gateway.models import CodecName

Buffer = bytes | bytearray | memoryview


class Compressor(Protocol):
    def compress(self, data: Buffer) -> bytes: ...
    def flush(self) -> bytes: ...


class CompressionCodec(Protocol):
    name: CodecName
    media_type: str
    extension: str

    def compressor(self) -> Compressor: ...


class _ZstdCompressor:
    def __init__(self, cctx: zstandard.ZstdCompressor) -> None:
        self._obj = cctx.compressobj()

    def compress(self, data: Buffer) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()


class ZstdCodec:
    name: CodecName = "zstd"
    media_type = "application/zstd"
    extension = ".zst"

    def __init__(self, level: int = 3, threads: int = 0) -> None:
        self.level = level
        self.threads = threads

    def compressor(self) -> Compressor:
        # A fresh context per upload: ZstdCompressor is not safe to share across threads.
        return _ZstdCompressor(zstandard.ZstdCompressor(level=self.level, threads=self.threads))


class _BrotliCompressor:
    def __init__(self, quality: int) -> None:
        self._obj = brotli.Compressor(quality=quality)

    def compress(self, data: Buffer) -> bytes:
        return self._obj.process(data)  # type: ignore[no-any-return]

    def flush(self) -> bytes:
        return self._obj.finish()  # type: ignore[no-any-return]


class BrotliCodec:
    name: CodecName = "brotli"
    media_type = "application/x-brotli"
    extension = ".br"

    def __init__(self, quality: int = 4) -> None:
        self.quality = quality

    def compressor(self) -> Compressor:
        return _BrotliCompressor(self.quality)


class GzipCodec:
    name: CodecName = "gzip"
    media_type = "application/gzip"
    extension = ".gz"

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def compressor(self) -> Compressor:
        return zlib.compressobj(self.level, zlib.DEFLATED, 31)  # 31: gzip container


class _Identity:
    def compress(self, data: Buffer) -> bytes:
        return data  # type: ignore[return-value]  # bytes in, the same bytes out: no copy

    def flush(self) -> bytes:
        return b""


class IdentityCodec:
    name: CodecName = "none"
    media_type = "application/octet-stream"
    extension = ""

    def compressor(self) -> Compressor:
        return _Identity()


def build_codecs(
    zstd_level: int = 3, brotli_quality: int = 4, gzip_level: int = 6, zstd_threads: int = 0
) -> dict[CodecName, CompressionCodec]:
    return {
        "zstd": ZstdCodec(zstd_level, zstd_threads),
        "brotli": BrotliCodec(brotli_quality),
        "gzip": GzipCodec(gzip_level),
        "none": IdentityCodec(),
    }
