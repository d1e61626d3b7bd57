"""Compression codecs: one small Protocol, one class per algorithm.

All three libraries release the GIL on large buffers, so blocks can be compressed in
a worker thread while the event loop keeps moving bytes.
"""

from __future__ import annotations

import os
import zlib
from typing import Protocol

import brotli
import zstandard

from ingester_gateway.models import CodecName

Buffer = bytes | bytearray | memoryview

# What each codec's stored bytes are called: the SE file's extension and media type.
EXTENSIONS: dict[CodecName, str] = {"zstd": ".zst", "brotli": ".br", "gzip": ".gz", "none": ""}
MEDIA_TYPES: dict[CodecName, str] = {
    "zstd": "application/zstd",
    "brotli": "application/x-brotli",
    "gzip": "application/gzip",
    "none": "application/octet-stream",
}


class Compressor(Protocol):
    def compress(self, data: Buffer) -> bytes: ...
    def flush(self) -> bytes: ...
    def close(self) -> None: ...


class CompressionCodec(Protocol):
    name: CodecName

    def compressor(self, size_hint: int | None = None, parallel: bool = False) -> Compressor:
        """A compressor for one stream; `size_hint` is the exact input size if known;
        `parallel` allows spreading the work over several cores."""
        ...


class _ZstdCompressor:
    def __init__(
        self, codec: ZstdCodec, cctx: zstandard.ZstdCompressor, workers: int, size: int
    ) -> None:
        self._codec = codec
        self._cctx: zstandard.ZstdCompressor | None = cctx
        self._workers = workers
        self._obj = cctx.compressobj(size=size)

    def compress(self, data: Buffer) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()

    def close(self) -> None:
        if self._cctx is not None:
            self._codec.release(self._cctx, self._workers)
            self._cctx = None


class ZstdCodec:
    """`threads`: 0 compresses in the caller's thread; N > 0 hands blocks to N zstd
    workers; -1 (auto) uses one worker per core when the caller allows `parallel`.

    Two single-threaded contexts are pooled (a used one holds ~3.5 MiB of tables);
    multi-threaded ones (~7 MiB, with their threads) are not kept past their stream.
    A context serves one stream at a time."""

    name: CodecName = "zstd"
    POOL_SIZE = 2
    JOB_SIZE = 1 << 20

    def __init__(self, level: int = 3, threads: int = 0) -> None:
        self.level = level
        self.threads = threads
        self._pool: list[zstandard.ZstdCompressor] = []

    def workers(self, parallel: bool) -> int:
        if self.threads >= 0:
            return self.threads
        return (os.cpu_count() or 1) if parallel else 0

    def compressor(self, size_hint: int | None = None, parallel: bool = False) -> Compressor:
        workers = self.workers(parallel)
        if workers == 0 and self._pool:
            cctx = self._pool.pop()
        elif workers == 0:
            cctx = zstandard.ZstdCompressor(level=self.level)
        else:
            # zstd's default jobs (4x the window) hold ~54 MiB per stream at level 3;
            # 1 MiB jobs hold ~10 MiB for ~80 % of the speed and ~97 % of the ratio
            # (in the gateway, where the other work shares the cores: ~the same speed).
            params = zstandard.ZstdCompressionParameters.from_level(
                self.level, threads=workers, job_size=self.JOB_SIZE
            )
            cctx = zstandard.ZstdCompressor(compression_params=params)
        # A known size goes into the frame header and lets zstd size its tables to it.
        return _ZstdCompressor(self, cctx, workers, -1 if size_hint is None else size_hint)

    def release(self, cctx: zstandard.ZstdCompressor, workers: int) -> None:
        if workers == 0 and len(self._pool) < self.POOL_SIZE:
            self._pool.append(cctx)


class _BrotliCompressor:
    """Brotli sizes its window from the first input it is given: a short first block
    (the gateway cuts one early) would cost the whole stream a fifth of its ratio. So
    the first `FIRST_INPUT` bytes are gathered before anything reaches the encoder."""

    FIRST_INPUT = 1 << 20

    def __init__(self, quality: int) -> None:
        self._obj = brotli.Compressor(quality=quality)
        self._gathered: list[bytes] | None = []
        self._gathered_size = 0

    def compress(self, data: Buffer) -> bytes:
        if self._gathered is not None:
            self._gathered.append(bytes(data))
            self._gathered_size += len(data)
            if self._gathered_size < self.FIRST_INPUT:
                return b""
            data = b"".join(self._gathered)
            self._gathered = None
        return self._obj.process(data)  # type: ignore[no-any-return]

    def flush(self) -> bytes:
        head = b""
        if self._gathered:
            head = self._obj.process(b"".join(self._gathered))
        self._gathered = None
        return head + self._obj.finish()  # type: ignore[no-any-return]

    def close(self) -> None:
        return None


class BrotliCodec:
    name: CodecName = "brotli"

    def __init__(self, quality: int = 4) -> None:
        self.quality = quality

    def compressor(self, size_hint: int | None = None, parallel: bool = False) -> Compressor:
        return _BrotliCompressor(self.quality)


class _GzipCompressor:
    def __init__(self, level: int) -> None:
        self._obj = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: the gzip container

    def compress(self, data: Buffer) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()

    def close(self) -> None:
        return None


class GzipCodec:
    name: CodecName = "gzip"

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def compressor(self, size_hint: int | None = None, parallel: bool = False) -> Compressor:
        return _GzipCompressor(self.level)


class _Identity:
    def compress(self, data: Buffer) -> bytes:
        return data  # type: ignore[return-value]  # bytes in, the same bytes out: no copy

    def flush(self) -> bytes:
        return b""

    def close(self) -> None:
        return None


class IdentityCodec:
    name: CodecName = "none"

    def compressor(self, size_hint: int | None = None, parallel: bool = False) -> Compressor:
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
