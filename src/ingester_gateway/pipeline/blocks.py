"""Coalescing body pieces (up to 64 KiB each from uvicorn) into blocks."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable


class BlockReader:
    """Blocks of at least the block size (the last may be shorter), each one
    `b"".join` of whole pieces: one copy per byte, no splitting; a piece that fills a
    block alone is passed on as is.

    `block_size` may be a callable, read at the start of each block, so the size can
    follow the load. `first_block_size` lets the first block be cut early: it is enough
    to classify the data and to open the upstream request sooner. `received` is told
    the size of each piece as it comes (progress follows the bytes, not the blocks).
    """

    def __init__(
        self,
        pieces: AsyncIterable[bytes],
        block_size: int | Callable[[], int],
        first_block_size: int | None = None,
        received: Callable[[int], None] | None = None,
    ) -> None:
        self._pieces = pieces.__aiter__()
        self._size = block_size if callable(block_size) else (lambda: block_size)
        self._next_size = first_block_size
        self._received = received
        self.ended = False  # the source is exhausted: the last block read was the final one

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        block = await self.read()
        if block is None:
            raise StopAsyncIteration
        return block

    async def read(self) -> bytes | None:
        """The next block, or None after the last."""
        if self.ended:
            return None
        target = self._next_size or self._size()
        self._next_size = None
        held: list[bytes] = []
        size = 0
        received = self._received
        async for piece in self._pieces:
            held.append(piece)
            size += len(piece)
            if received is not None:
                received(len(piece))
            if size >= target:
                return held[0] if len(held) == 1 else b"".join(held)
        self.ended = True
        if not held:
            return None
        return held[0] if len(held) == 1 else b"".join(held)
