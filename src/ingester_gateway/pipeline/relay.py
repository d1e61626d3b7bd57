"""The stored bytes of one upload, between the producer (client -> codec) and the
attempt that sends them to a Storage Element.

The producer `put`s chunks and, once the whole body is checked, `finish`es with the
closing bytes. An attempt reads `chunks()` from the start: what the relay still holds
is replayed, then it follows the producer live. Chunks are kept while the total stays
within the replay limit (read afresh at every `put`, so it can shrink under load), so
a failed attempt can be replayed on another node; once past it, replay is lost, every
consumed chunk is dropped and memory stays at about two chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable


class NotReplayable(Exception):
    """A new attempt needs bytes that were already dropped."""


class Relay:
    def __init__(self, replay_limit: int | Callable[[], int] = 0) -> None:
        self._replay_limit = replay_limit if callable(replay_limit) else (lambda: replay_limit)
        self._held: list[bytes] = []  # chunks from index `_dropped` on
        self._held_bytes = 0
        self._dropped = 0
        self._produced = 0  # chunks put so far
        self._taken = 0  # chunks the current reader has taken
        self._trailer: bytes | None = None
        self._produced_event = asyncio.Event()
        self._taken_event = asyncio.Event()
        self.bytes_taken = 0  # by the current reader

    # -- producer ------------------------------------------------------------------

    async def put(self, chunk: bytes) -> None:
        """Hand over a chunk; waits while the reader is more than one chunk behind."""
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        self._produced += 1
        self._produced_event.set()
        while self._produced - self._taken > 1:
            self._taken_event.clear()
            await self._taken_event.wait()
        self._drop_consumed()

    def finish(self, trailer: bytes) -> None:
        """The body is complete and verified: `trailer` ends the upstream body."""
        self._trailer = trailer
        self._produced_event.set()

    # -- sender --------------------------------------------------------------------

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    @property
    def replayable(self) -> bool:
        """Every chunk since the start is still held."""
        return self._dropped == 0

    @property
    def trailer(self) -> bytes:
        assert self._trailer is not None, "the relay is not finished"
        return self._trailer

    async def chunks(self) -> AsyncIterator[bytes]:
        """Every chunk from the first (replayed) to the last (live); ends once the
        relay is finished. The trailer is not among them."""
        if not self.replayable:
            raise NotReplayable()
        self._taken = 0
        self.bytes_taken = 0
        while True:
            while self._taken < self._produced:
                chunk = self._held[self._taken - self._dropped]
                self._taken += 1
                self.bytes_taken += len(chunk)
                self._taken_event.set()
                yield chunk
            if self._trailer is not None:
                return
            self._produced_event.clear()
            await self._produced_event.wait()

    def _drop_consumed(self) -> None:
        if self._dropped == 0 and self._held_bytes <= self._replay_limit():
            return  # all held: still replayable
        while self._dropped < self._taken:
            self._held_bytes -= len(self._held[0])
            del self._held[0]
            self._dropped += 1
