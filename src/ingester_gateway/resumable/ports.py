"""What resumable uploads need from storage, as small Protocols (tusd's DataStore and
Locker lesson): the bytes in staging, the state beside them, and a lock per upload.
A new backend is one module that implements one of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ingester_gateway.resumable.state import UploadState
from ingester_gateway.upload.ports import BodySource
from ingester_gateway.upload.sources import Available


class StateUnavailable(Exception):
    """The state store cannot be reached (Redis away)."""


class StateStore(Protocol):
    """Upload states by id, with an index of when they expire."""

    async def get(self, upload_id: str) -> UploadState | None: ...

    async def put(self, state: UploadState) -> None:
        """Write the whole state (creation, and changes by the one who may make them)."""
        ...

    async def advance(self, state: UploadState, expected_offset: int) -> bool:
        """Write `state` only if the stored offset is still `expected_offset` (and the
        upload still exists): a writer that lost its lock cannot move the offset."""
        ...

    async def delete(self, upload_id: str) -> None: ...

    async def expiring(self, now: float, limit: int) -> list[str]:
        """Ids of uploads whose expiry time has passed (they may be busy: check)."""
        ...

    async def postpone(self, upload_id: str, until: float) -> None:
        """Not expired after all (being stored, part of a final): ask again `until`."""
        ...


class StagedWriter(Protocol):
    """Appends one request's data to a staging file, from a known durable offset."""

    @property
    def written(self) -> int:
        """Bytes written so far by this writer (contiguous from its start)."""
        ...

    async def write(self, piece: bytes) -> None:
        """Queue `piece` (written and hashed in a worker thread, in order); returns once
        the previous piece is written, so one piece is in flight while the next arrives."""
        ...

    async def sync(self) -> int:
        """Everything queued is written and on disk; the durable bytes of this writer."""
        ...

    async def rollback(self) -> None:
        """Drop what this writer wrote (a checksum that did not match)."""
        ...

    async def close(self) -> None: ...


class Staging(Protocol):
    """Where the bytes of resumable uploads wait until they are stored."""

    async def create(self, upload_id: str) -> None: ...

    async def writer(self, upload_id: str, offset: int, digests: Sequence[Any]) -> StagedWriter:
        """A writer appending at `offset`, the durable end (anything past it, left by a
        request that was cut or a process that died, is dropped); `digests` (hashlib
        objects) are updated with every piece written."""
        ...

    def source(
        self, parts: Sequence[tuple[str, int]], available: Available | None = None
    ) -> BodySource:
        """The bytes of these uploads (id, size), one after the other, read once; with
        `available`, one upload still received (see `StagedFiles`)."""
        ...

    async def remove(self, upload_id: str) -> None: ...

    async def orphans(self, older_than: float) -> list[str]:
        """Ids of staging files untouched since `older_than` (unix time)."""
        ...


class Lock(Protocol):
    @property
    def lost(self) -> bool:
        """The lock ran out (its holder could not renew it): stop writing."""
        ...

    async def release(self) -> None: ...


class LockTimeout(Exception):
    """The holder did not let go in time."""


class Locker(Protocol):
    """One request at a time per upload, across every gateway sharing the staging."""

    async def acquire(
        self, upload_id: str, on_release: Callable[[], None], max_wait: float
    ) -> Lock:
        """Take the upload's lock. A holder is asked to let go (its `on_release` is
        called: it stops reading, saves what arrived, answers, releases); LockTimeout
        when it has not within `max_wait` seconds (0: only a free lock, no one is asked)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def no_release() -> None:
    """The `on_release` of a lock whose holder never lets go early (a job, the sweep)."""
    return None
