"""Body sources: where an upload's bytes come from (the `BodySource` Protocol).

A new way for bytes to reach a Storage Element is one more small class here; the
driver does not change.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path

import aiohttp

from ingester_gateway.registry import NodeRecord
from ingester_gateway.upstream.wire import describe_error

# Read ahead of the copy (aiohttp pauses the socket beyond twice this).
DOWNLOAD_BUFFER = 512 * 1024
STAGED_PIECE = 2**20  # what one read of a staged file takes


async def _nothing() -> None:
    return None


class ClientStream:
    """The data of a client's request as it arrives: a raw body, or the file part of a
    form (then `after` checks that nothing but the closing boundary follows it)."""

    def __init__(
        self,
        pieces: AsyncIterable[bytes],
        after: Callable[[], Awaitable[None]] = _nothing,
    ) -> None:
        self._pieces = pieces
        self._after = after

    def pieces(self) -> AsyncIterator[bytes]:
        return self._pieces.__aiter__()

    async def finish(self) -> None:
        await self._after()


class SourceFailed(Exception):
    """The source could not give its bytes (an SE's download failed)."""


class SeDownload:
    """A stored file as another Storage Element serves it (`GET .../download`): the
    source of a finalize's copy. The bytes come as the SE holds them."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        node: NodeRecord,
        file_id: str,
        headers: dict[str, str],
        expected_size: int,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self._session = session
        self._url = f"{node.url.rstrip('/')}/api/v1/files/{file_id}/download"
        self._headers = headers
        self._expected = expected_size
        self._timeout = timeout
        self.received = 0

    async def pieces(self) -> AsyncIterator[bytes]:
        try:
            async with self._session.get(
                self._url,
                headers=self._headers,
                timeout=self._timeout,
                read_bufsize=DOWNLOAD_BUFFER,
            ) as resp:
                if resp.status != 200:
                    reason = describe_error(await resp.read())
                    raise SourceFailed(f"the source answered {resp.status}: {reason}")
                # The pieces as the socket gave them: the block reader joins them once.
                async for piece in resp.content.iter_any():
                    self.received += len(piece)
                    yield piece
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceFailed(f"the source's download failed: {exc}") from None

    async def finish(self) -> None:
        if self.received != self._expected:
            raise SourceFailed(
                f"the source gave {self.received} bytes, the record says {self._expected}"
            )


# While an upload is still received: wait until more than the given bytes are durable;
# the durable end then, and whether it is the upload's end.
Available = Callable[[int], Awaitable[tuple[int, bool]]]


class StagedFiles:
    """A resumable upload's staged bytes: its files (a concatenated upload's parts) read
    one after the other in place, never first copied into one; each piece is read in a
    worker thread while the one before is processed. With `available`, the (single)
    file may still be growing: reading follows its durable end until the upload's
    last byte (a file stored while it is received)."""

    def __init__(
        self,
        files: Sequence[tuple[Path, int]],
        executor: Executor,
        available: Available | None = None,
    ) -> None:
        assert available is None or len(files) == 1
        self._files = list(files)
        self._executor = executor
        self._available = available
        self.expected = sum(size for _, size in self._files)
        self.received = 0

    async def pieces(self) -> AsyncIterator[bytes]:
        for path, size in self._files:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise SourceFailed(f"staged bytes unreadable: {exc.strerror}") from None
            try:
                async for piece in self._file(fd, size):
                    yield piece
            finally:
                os.close(fd)

    async def _file(self, fd: int, end: int) -> AsyncIterator[bytes]:
        growing = self._available is not None
        position = 0
        ahead: asyncio.Future[int] | None = None
        buffer = bytearray()
        try:
            while True:
                if ahead is None:
                    if growing and position >= end:
                        assert self._available is not None
                        end, last = await self._available(position)
                        growing = not last
                        self.expected = end
                    if position >= end:
                        return
                    buffer, ahead = self._read(fd, position, end)
                got = await ahead
                ahead = None
                if not got:
                    raise SourceFailed("a staged file is shorter than its upload")
                piece = bytes(buffer) if got == len(buffer) else bytes(buffer[:got])
                position += got
                self.received += got
                if position < end:  # read the next piece while this one is processed
                    buffer, ahead = self._read(fd, position, end)
                yield piece
        except OSError as exc:
            raise SourceFailed(f"staged bytes unreadable: {exc.strerror}") from None
        finally:
            if ahead is not None:  # the fd closes after this: let the read end first
                await asyncio.gather(ahead, return_exceptions=True)

    def _read(self, fd: int, position: int, end: int) -> tuple[bytearray, asyncio.Future[int]]:
        """Read the next piece in a worker thread, into memory taken here: a thread's
        own allocations would stay in its malloc arena (RSS) once freed."""
        buffer = bytearray(min(STAGED_PIECE, end - position))
        loop = asyncio.get_running_loop()
        return buffer, loop.run_in_executor(self._executor, os.preadv, fd, [buffer], position)

    async def finish(self) -> None:
        if self.received != self.expected:
            raise SourceFailed(f"read {self.received} staged bytes, expected {self.expected}")
