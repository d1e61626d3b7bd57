"""Body sources: where an upload's bytes come from (the `BodySource` Protocol).

A new way for bytes to reach a Storage Element is one more small class here; the
driver does not change.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable


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
