"""The file being uploaded as byte ranges: read in blocks off the event loop with `pread`
(the parts of a parallel upload share one descriptor and never move a file position),
so memory holds a block per part in flight, whatever the file's size."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ingester_gateway.cli.upload.rules import Pacer

BLOCK = 1 << 20
MIN_PACED_BLOCK = 16 << 10


class FileSource:
    def __init__(
        self,
        path: Path,
        rate: float | None = None,
        block: int = BLOCK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.block = block
        # Paced: about 8 blocks a second, so the bytes flow rather than come in bursts.
        self.paced_block = min(block, max(MIN_PACED_BLOCK, int(rate / 8))) if rate else block
        self._pacer = Pacer(rate) if rate else None
        self._due = 0.0  # when the next paced block may go (shared by every part)
        self._clock = clock
        self._fd: int | None = None

    def open(self) -> FileSource:
        self._fd = os.open(self.path, os.O_RDONLY)
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def _read(self, position: int, size: int) -> bytes:
        assert self._fd is not None, "the source is not open"
        data = await asyncio.to_thread(os.pread, self._fd, size, position)
        if len(data) != size:
            raise OSError(f"{self.path} shrank while it was uploaded")
        return data

    async def sha256(
        self, start: int, end: int, on_block: Callable[[int], None] | None = None
    ) -> bytes:
        """The sha-256 of bytes [start, end), read once (not paced)."""
        digest = hashlib.sha256()
        position = start
        while position < end:
            data = await self._read(position, min(self.block, end - position))
            await asyncio.to_thread(digest.update, data)  # hashlib lets the GIL go
            position += len(data)
            if on_block is not None:
                on_block(len(data))
        return digest.digest()

    async def blocks(
        self, start: int, end: int, on_block: Callable[[int], None]
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) block by block, paced by `--limit-rate`; `on_block` is told
        each block's size as it is handed to the connection."""
        position = start
        while position < end:
            size = min(self.paced_block, end - position)
            if self._pacer is not None:
                pause, self._due = self._pacer.wait(self._due, self._clock(), size)
                if pause > 0:
                    await asyncio.sleep(pause)
            data = await self._read(position, size)
            position += size
            on_block(size)
            yield data
