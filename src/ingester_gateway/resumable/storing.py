"""A staged upload into artStore: the same upload core as a streamed upload (codec, both
checksums, node selection, failover, registration, compensation), as an outbox job
(durable: a restarted gateway, or a sibling on the same Redis, picks it up).

An upload is stored once its last byte is durable; one whose length is known at its
creation may also be stored while it is received (`eager`): the job then reads the
staging file as it grows, so the SE has most of the file when the last byte arrives.
That is an optimisation only: if the client pauses, or anything fails, the job stops
without a trace and the store after the last byte does the work.

Two jobs of one upload never store it at once: each first takes the upload's store lock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ingester_gateway.errors import ApiError
from ingester_gateway.models import UploadProgress
from ingester_gateway.observability import get_logger
from ingester_gateway.outbox.jobs import StoreUpload
from ingester_gateway.resumable.ports import (
    Locker,
    LockTimeout,
    Staging,
    StateStore,
    StateUnavailable,
    no_release,
)
from ingester_gateway.resumable.state import UploadState, failed, stored
from ingester_gateway.upload.driver import UploadDriver, UploadServices, new_progress
from ingester_gateway.upload.plan import UploadRequest
from ingester_gateway.upload.sources import Available, SourceFailed

_log = get_logger("ingester_gateway.resumable")
FOLLOW_IDLE = 30.0  # a growing upload that stays this long without new bytes: stop following
FOLLOW_POLL = 0.25  # how often the state is read while following (another gateway appends)
# A failure another attempt may not see: no node now, full, slow, no credential.
_TRANSIENT = frozenset(
    {
        "no_storage_available",
        "storage_failed_mid_upload",
        "insufficient_storage",
        "storage_timeout",
        "storage_credentials",
    }
)


class SourcePaused(SourceFailed):
    """A growing upload got no new bytes for a while: store it after its last byte."""


class Signals:
    """Wakes whoever follows an upload when this process saves a new offset for it."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, upload_id: str) -> None:
        event = self._events.pop(upload_id, None)
        if event is not None:
            event.set()

    async def wait(self, upload_id: str, seconds: float) -> None:
        event = self._events.setdefault(upload_id, asyncio.Event())
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            pass


@dataclass
class StoreSetup:
    store: StateStore
    staging: Staging
    locker: Locker
    services: UploadServices  # credentials: the service account's when there is one
    has_service_account: bool
    tokens: dict[str, str]  # upload id -> the owner's latest token (memory only)
    signals: Signals
    expiry: float
    clock: Callable[[], float] = time.time


class UploadStorer:
    def __init__(self, setup: StoreSetup) -> None:
        self._s = setup
        self.running: dict[str, UploadProgress] = {}  # upload id -> its store's progress

    async def work(self, job: StoreUpload) -> bool:
        """The outbox handler: True once nothing is left to do for this job."""
        try:
            lock = await self._s.locker.acquire(f"store-{job.upload_id}", no_release, 0)
        except LockTimeout:
            return False  # another job stores it right now; look again later
        except StateUnavailable:
            return False
        try:
            state = await self._s.store.get(job.upload_id)
            if state is None or state.phase in ("stored", "failed"):
                return True
            if state.receiving:
                # Its last byte will ask for a store; a growing one may be followed now.
                return True if not state.eager else await self._store(state, following=True)
            return await self._store(state, following=False)
        except StateUnavailable:
            return False
        finally:
            await lock.release()

    def _request(self, state: UploadState) -> UploadRequest:
        token = self._s.tokens.get(state.id, "")
        return UploadRequest(
            upload_id=state.id,
            request_id=uuid.uuid4().hex,
            principal=state.owner.principal(token),
            filename=state.filename,
            declared_content_type=state.filetype,
            options=state.options,
            expected_size=state.length,
            exact_size=state.length,
            claimed_sha256=bytes.fromhex(state.repr_sha256) if state.repr_sha256 else None,
            client_address=state.client_address,
        )

    async def _parts(self, state: UploadState) -> list[tuple[str, int]]:
        if not state.final:
            assert state.length is not None
            return [(state.id, state.length)]
        parts = []
        for part_id in state.parts:
            part = await self._s.store.get(part_id)
            if part is None or part.length is None:
                raise SourceFailed(f"the partial upload {part_id} is gone")
            parts.append((part_id, part.length))
        return parts

    async def _store(self, state: UploadState, following: bool) -> bool:
        s = self._s
        if not s.has_service_account and not s.tokens.get(state.id):
            if following:
                return True
            state.error = "waiting for the owner's next request (no service account)"
            await s.store.put(state)
            return False
        request = self._request(state)
        if not following:
            state.phase = "storing"
            await s.store.put(state)
        progress = new_progress(request)
        self.running[state.id] = progress
        try:
            if following:  # read what is durable now, then follow the upload's offset
                source = s.staging.source([(state.id, state.offset)], self._follower(state.id))
            else:
                source = s.staging.source(await self._parts(state))
            result = await UploadDriver(s.services, request, progress).run(source)
        except (ApiError, SourceFailed) as exc:
            return await self._failed(state, exc, following)
        finally:
            self.running.pop(state.id, None)
        latest = await s.store.get(state.id)
        if latest is None:  # cancelled while being stored: the file stays in artStore
            _log.warning("upload_stored_after_delete", upload_id=state.id, file_id=result.file_id)
            return True
        stored(latest, result, s.clock(), s.expiry)
        await s.store.put(latest)
        s.tokens.pop(state.id, None)
        for part_id, _ in await self._parts(state) if state.final else []:
            await s.staging.remove(part_id)
            await s.store.delete(part_id)
        await s.staging.remove(state.id)
        _log.info(
            "resumable_stored",
            upload_id=state.id,
            file_id=result.file_id,
            node=result.storage_element_id,
            file_size=result.file_size,
            while_received=following,
        )
        return True

    async def _failed(self, state: UploadState, exc: Exception, following: bool) -> bool:
        message = exc.message if isinstance(exc, ApiError) else str(exc)
        code = exc.code if isinstance(exc, ApiError) else "source_failed"
        if following:  # only an optimisation: the store after the last byte does it
            _log.info("resumable_follow_stopped", upload_id=state.id, reason=message)
            return True
        s = self._s
        if code in _TRANSIENT and s.clock() < state.expires_at:
            state.error = message
            await s.store.put(state)
            _log.warning("resumable_store_retry", upload_id=state.id, error=message)
            return False
        failed(state, message, s.clock(), s.expiry)
        await s.store.put(state)
        _log.warning("resumable_store_failed", upload_id=state.id, code=code, error=message)
        return True

    def _follower(self, upload_id: str) -> Available:
        """How far a growing upload's staged bytes may be read (see `StagedFiles`)."""
        s = self._s

        async def available(read: int) -> tuple[int, bool]:
            idle_until = s.clock() + FOLLOW_IDLE
            while True:
                try:
                    state = await s.store.get(upload_id)
                except StateUnavailable as exc:
                    raise SourceFailed(f"the upload's state is unreachable: {exc}") from None
                if state is None or state.phase in ("failed", "stored"):
                    raise SourceFailed("the upload is gone")
                if not state.receiving:
                    return state.offset, True
                if state.offset > read:
                    return state.offset, False
                if s.clock() >= idle_until:
                    raise SourcePaused("no new bytes came for a while")
                await s.signals.wait(upload_id, FOLLOW_POLL)

        return available
