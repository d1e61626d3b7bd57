"""Body sources: where an upload's bytes come from (the `BodySource` Protocol).

A new way for bytes to reach a Storage Element is one more small class here; the
driver does not change.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import aiohttp

from ingester_gateway.registry import NodeRecord
from ingester_gateway.upstream.wire import describe_error

# Read ahead of the copy (aiohttp pauses the socket beyond twice this).
DOWNLOAD_BUFFER = 512 * 1024


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
