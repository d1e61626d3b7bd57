"""Per-upload block encoding: sha256 of the original, codec, sha256 of the stored bytes."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import Executor

from ingester_gateway.pipeline.codecs import CompressionCodec

# Below this, a thread hop costs more than the hashing and compression it moves.
THREAD_MIN_BYTES = 128 * 1024


class BlockEncoder:
    """Encodes one upload's blocks strictly in order. Not shared between uploads."""

    def __init__(self, codec: CompressionCodec, executor: Executor | None = None) -> None:
        self.codec = codec
        self._compressor = codec.compressor()
        self._original = hashlib.sha256()
        # Pass-through: the stored bytes are the original bytes, hash them once.
        self._stored = self._original if codec.name == "none" else hashlib.sha256()
        self._executor = executor
        self.original_size = 0
        self.stored_size = 0

    def encode(self, block: bytes) -> bytes:
        self._original.update(block)
        out = self._compressor.compress(block)
        if self._stored is not self._original and out:
            self._stored.update(out)
        self.original_size += len(block)
        self.stored_size += len(out)
        return out

    def submit(self, block: bytes) -> asyncio.Future[bytes]:
        """Start encoding `block` now (in a worker thread when it is large enough to
        be worth the hop); await the result later."""
        loop = asyncio.get_running_loop()
        if self._executor is None or len(block) < THREAD_MIN_BYTES:
            done: asyncio.Future[bytes] = loop.create_future()
            done.set_result(self.encode(block))
            return done
        return loop.run_in_executor(self._executor, self.encode, block)

    def finish(self) -> bytes:
        tail = self._compressor.flush()
        if tail:
            self._stored.update(tail)
            self.stored_size += len(tail)
        return tail

    @property
    def original_digest(self) -> bytes:
        return self._original.digest()

    @property
    def original_hex(self) -> str:
        return self._original.hexdigest()

    @property
    def stored_hex(self) -> str:
        return self._stored.hexdigest()
