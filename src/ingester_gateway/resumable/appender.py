"""One request's data appended to a staged upload: the I/O under the upload's lock.

The data goes to the staging file piece by piece (written and hashed by a worker thread
while the next piece arrives). Offsets are saved only once the bytes under them are on
disk, so an offset anyone reads is durable. Without a checksum the offset is saved
along the way (checkpoints) and, when the request is cut, up to the last byte that
arrived; with one, the request counts whole or not at all.

    body complete      -> sync, check the checksum (460 + nothing kept on a mismatch)
    client gone, 408   -> keep what arrived (no checksum) or nothing (checksum)
    another request    -> the same, then answer 400 `upload_interrupted` (the anchors')
    process stopping   -> the same, then let the cancellation go on
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ingester_gateway import errors
from ingester_gateway.errors import ApiError
from ingester_gateway.pipeline.body import ClientDisconnected
from ingester_gateway.resumable.headers import Checksum
from ingester_gateway.resumable.ports import Lock, StagedWriter

# A checkpoint once this much has arrived and this long has passed since the last.
CHECKPOINT_BYTES = 4 * 2**20
CHECKPOINT_SECONDS = 1.0

Ending = Literal["complete", "cut", "interrupted", "stopped"]
# Save the durable end (start + bytes; True: the whole body is in): False when the
# upload moved on without this request.
Save = Callable[[int, bool], Awaitable[bool]]


@dataclass(slots=True)
class Appended:
    ending: Ending
    error: ApiError | None = None  # what a cut request ran into (408)


class _TakenOver(Exception):
    """The lock ran out, or someone else moved the upload on: stop writing."""


class Appender:
    """Drives one request's body into a `StagedWriter`; offsets go out through `save`
    (which also keeps the caller's view of the upload)."""

    def __init__(
        self,
        writer: StagedWriter,
        start: int,
        lock: Lock,
        save: Save,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._writer = writer
        self._start = start
        self._lock = lock
        self._save = save
        self._clock = clock
        self._task = asyncio.current_task()
        self.released = False  # another request asked for the upload
        self._reading = False  # waiting for the client's next piece (nothing else)

    def release(self) -> None:
        """The lock's `on_release`: stop reading. A wait for the client is cut short;
        a write or a save in progress ends first (then the loop sees the request)."""
        if not self.released:
            self.released = True
            if self._reading and self._task is not None and not self._task.done():
                self._task.cancel()

    async def run(
        self,
        body: AsyncIterable[bytes],
        checksum: Checksum | None,
        digests: Mapping[str, Any],
        late_checksum: Callable[[], Checksum | None] | None = None,
    ) -> Appended:
        """Append `body`; `digests` are the hashlib objects the writer feeds, by name:
        for `checksum`, or for the one `late_checksum` gives after the body (a trailer)."""
        whole = checksum is not None or late_checksum is not None
        ending: Ending = "complete"
        error: ApiError | None = None
        try:
            await self._receive(body, checkpoints=not whole)
        except asyncio.CancelledError:
            if not self.released:
                await asyncio.shield(self._keep(whole))  # the process is stopping
                raise
            if self._task is not None:
                self._task.uncancel()
            ending = "interrupted"
        except _TakenOver:
            self.released = True
            ending = "interrupted"
        except ClientDisconnected:
            ending = "cut"
        except ApiError as exc:
            # A slow client (408) or a gateway that drains (503): the request ends, what
            # arrived is kept and answered. Anything else (too long, staging full): nothing.
            if exc.status != 408 and exc.problem is not errors.SHUTTING_DOWN:
                await self._writer.rollback()
                raise
            ending, error = "cut", exc
        if ending != "complete":
            await self._keep(whole)
            return Appended(ending, error)
        durable = await self._writer.sync()
        if whole:
            claimed = checksum if checksum is not None else late_checksum and late_checksum()
            if claimed is None:
                await self._writer.rollback()
                raise errors.UPLOAD_CHECKSUM_MISMATCH(
                    "the checksum announced in Trailer did not come; nothing was kept"
                )
            digest = digests.get(claimed.algorithm)
            if digest is None or digest.digest() != claimed.digest:
                await self._writer.rollback()
                raise errors.UPLOAD_CHECKSUM_MISMATCH(
                    f"the data does not match its {claimed.header} ({claimed.algorithm});"
                    f" nothing of it was kept, the offset stays {self._start}"
                )
        if not await self._save(self._start + durable, True):
            return Appended("interrupted")
        return Appended("complete")

    async def _receive(self, body: AsyncIterable[bytes], checkpoints: bool) -> None:
        synced = 0
        last = self._clock()
        pieces = body.__aiter__()
        while True:
            self._reading = True
            try:
                piece = await anext(pieces)
            except StopAsyncIteration:
                return
            finally:
                self._reading = False
            if self.released or self._lock.lost:
                raise _TakenOver()
            await self._writer.write(piece)
            if (
                checkpoints
                and self._writer.written - synced >= CHECKPOINT_BYTES
                and self._clock() - last >= CHECKPOINT_SECONDS
            ):
                synced = await self._writer.sync()
                last = self._clock()
                if not await self._save(self._start + synced, False):
                    raise _TakenOver()

    async def _keep(self, whole: bool) -> None:
        """A request that did not end: keep what arrived, when it may count alone."""
        if whole:
            await self._writer.rollback()
            return
        durable = await self._writer.sync()
        if durable and not self._lock.lost:
            await self._save(self._start + durable, False)
