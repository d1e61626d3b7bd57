"""Coalescing body pieces (up to 64 KiB each from uvicorn) into blocks."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def coalesce(pieces: AsyncIterable[bytes], block_size: int) -> AsyncIterator[bytes]:
    """Yield blocks of at least `block_size` bytes (the last may be shorter).

    A block is one `b"".join` of whole pieces: one copy per byte, no splitting. A
    piece that alone fills a block is passed on as is, without a copy.
    """
    held: list[bytes] = []
    size = 0
    async for piece in pieces:
        held.append(piece)
        size += len(piece)
        if size >= block_size:
            yield held[0] if len(held) == 1 else b"".join(held)
            held = []
            size = 0
    if held:
        yield held[0] if len(held) == 1 else b"".join(held)
