"""Per-upload block encoding: sha256 of the original, codec, sha256 of the stored bytes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable
from concurrent.futures import Executor
from typing import Any

from ingester_gateway.pipeline.codecs import CompressionCodec

# Below this, a thread hop costs more than the hashing and compression it moves.
THREAD_MIN_BYTES = 128 * 1024


class BlockEncoder:
    """Encodes one upload's blocks strictly in order. Not shared between uploads."""

    def __init__(
        self,
        codec: CompressionCodec,
        executor: Executor | None = None,
        size_hint: int | None = None,
        parallel: bool = False,
    ) -> None:
        self.codec = codec
        self._compressor = codec.compressor(size_hint, parallel)
        self._original = hashlib.sha256()
        # Pass-through: the stored bytes are the original bytes, hash them once.
        self._stored = self._original if codec.name == "none" else hashlib.sha256()
        self._executor = executor
        # Worker-thread jobs of the last `submit`: they use the compressor until done.
        self._in_flight: tuple[asyncio.Future[Any], ...] = ()
        self.original_size = 0
        self.stored_size = 0

    def encode(self, block: bytes) -> bytes:
        self._original.update(block)
        self.original_size += len(block)
        if self._stored is self._original:
            self.stored_size += len(block)
            return block
        return self._compress(block)

    def _compress(self, block: bytes) -> bytes:
        out = self._compressor.compress(block)
        if out:
            self._stored.update(out)
        self.stored_size += len(out)
        return out

    def submit(self, block: bytes) -> Awaitable[bytes]:
        """Start encoding `block` now and await the result later. Large blocks go to
        worker threads (hashlib and the codecs release the GIL); when compressing,
        the original's sha256 and the compression run side by side on two threads."""
        if self._executor is None or len(block) < THREAD_MIN_BYTES:
            return _ready(self.encode(block))
        loop = asyncio.get_running_loop()
        self.original_size += len(block)
        hashed = loop.run_in_executor(self._executor, self._original.update, block)
        if self._stored is self._original:  # pass-through: the hash is all the work
            self.stored_size += len(block)
            self._in_flight = (hashed,)
            return _after(hashed, block)
        compressed = loop.run_in_executor(self._executor, self._compress, block)
        self._in_flight = (hashed, compressed)
        return _after(hashed, compressed)

    def finish(self) -> bytes:
        tail = self._compressor.flush()
        if tail:
            self._stored.update(tail)
            self.stored_size += len(tail)
        return tail

    def close(self) -> None:
        """Give pooled codec state back (after `finish`, or when the upload failed). While
        a worker thread still compresses with it, it is not given back but dropped: the
        next upload must not share a compressor with a running job."""
        if any(not job.done() for job in self._in_flight):
            return
        self._compressor.close()

    @property
    def original_digest(self) -> bytes:
        return self._original.digest()

    @property
    def original_hex(self) -> str:
        return self._original.hexdigest()

    @property
    def stored_hex(self) -> str:
        return self._stored.hexdigest()


async def _ready(value: bytes) -> bytes:
    return value


async def _after(first: Awaitable[object], result: Awaitable[bytes] | bytes) -> bytes:
    await first
    return result if isinstance(result, bytes) else await result


async def settle(job: Awaitable[bytes]) -> None:
    """Wait for a submitted block whose result is no longer wanted (the upload failed
    while it was being encoded): its worker threads finish with the compressor before
    the compressor is closed, and the job is awaited, not left for the collector."""
    with contextlib.suppress(Exception):
        await job
