"""Resumable uploads, one operation per method: create, append, read, terminate, and the
sweep of expired ones. The protocol rules are pure (state.py, protocol.py), bytes go
through the `Staging` and `StateStore` Protocols, one request at a time per upload
(`Locker`), and a complete upload becomes an outbox job (storing.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import msgspec

from ingester_gateway import errors
from ingester_gateway.auth.verify import Principal
from ingester_gateway.models import UploadProgress
from ingester_gateway.observability import get_logger
from ingester_gateway.outbox.jobs import StoreUpload, new_job_id
from ingester_gateway.outbox.queue import Outbox, OutboxUnavailable
from ingester_gateway.resumable.appender import Appended, Appender
from ingester_gateway.resumable.expiry import Sweeper, discard
from ingester_gateway.resumable.headers import CHECKSUM_ALGORITHMS, DIGEST_ALGORITHMS, Checksum
from ingester_gateway.resumable.ports import (
    Lock,
    Locker,
    LockTimeout,
    Staging,
    StateStore,
    StateUnavailable,
)
from ingester_gateway.resumable.protocol import Append, Creation, trailer_checksum
from ingester_gateway.resumable.state import (
    Dialect,
    Owner,
    UploadState,
    appended,
    check_append,
    check_visible,
    declare_length,
    finished_partial,
    progress_of,
    retried,
    room,
)
from ingester_gateway.resumable.storing import Signals, UploadStorer

_log = get_logger("ingester_gateway.resumable")
EAGER_MIN_BYTES = 8 * 2**20  # smaller uploads are stored after their last byte only
MAX_TOKENS = 10_000


@dataclass
class ResumableSetup:
    store: StateStore
    staging: Staging
    locker: Locker
    outbox: Outbox
    storer: UploadStorer
    signals: Signals
    tokens: dict[str, str]  # shared with the storer
    expiry: float  # seconds an upload lives after its last use
    max_size: int
    refuse_empty: bool  # artStore's registry holds no empty file
    eager: bool  # store uploads of known length while they are received
    lock_wait: float = 10.0  # a request waits this long for the holder to let go
    clock: Callable[[], float] = time.time


@dataclass(slots=True)
class _Release:
    """The lock's `on_release`, before and after the request's appender exists."""

    asked: bool = False
    target: Callable[[], None] | None = None

    def __call__(self) -> None:
        self.asked = True
        if self.target is not None:
            self.target()


Trailers = Callable[[], Mapping[str, str]]


async def _bounded(body: AsyncIterable[bytes], limit: int) -> AsyncIterator[bytes]:
    """The body, refused (413) once it goes past what the upload may still take."""
    total = 0
    async for piece in body:
        total += len(piece)
        if total > limit:
            raise errors.PAYLOAD_TOO_LARGE(f"the upload takes at most {limit} more bytes")
        yield piece


class ResumableUploads:
    def __init__(self, setup: ResumableSetup) -> None:
        self._s = setup
        s = setup
        self.sweeper = Sweeper(s.store, s.staging, s.locker, s.tokens, s.expiry, s.clock)

    # -- life ----------------------------------------------------------------------

    async def start(self) -> None:
        await self._s.locker.start()
        await self.sweeper.start()

    async def stop(self) -> None:
        await self.sweeper.stop()
        await self._s.locker.stop()

    # -- the operations ------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        dialect: Dialect,
        creation: Creation,
        client_address: str | None,
    ) -> UploadState:
        """A new upload (its data, if any, is appended by `write` under its lock)."""
        s = self._s
        now = s.clock()
        parts: list[UploadState] = []
        length = creation.length
        if creation.concat is not None and not creation.concat.partial:
            for part_id in creation.concat.parts:
                part = check_visible(await s.store.get(part_id), principal.sub, now)
                if not finished_partial(part) or part.final_of is not None:
                    raise errors.PARTIAL_UNFINISHED(
                        f"{part_id} is not a complete partial upload of its own"
                    )
                parts.append(part)
            length = sum(part.length or 0 for part in parts)
            if length > s.max_size:
                raise errors.PAYLOAD_TOO_LARGE(f"upload exceeds the limit of {s.max_size} bytes")
        partial = creation.concat is not None and creation.concat.partial
        if length == 0 and s.refuse_empty and not partial:
            raise errors.EMPTY_FILE("artStore's file registry cannot hold an empty file")
        state = UploadState(
            id=uuid.uuid4().hex,
            owner=Owner.of(principal),
            dialect=dialect,
            created_at=now,
            expires_at=now + s.expiry,
            length=length,
            filename=creation.filename,
            filetype=creation.filetype,
            options=creation.options,
            metadata=creation.metadata,
            client_address=client_address,
            partial=partial,
            parts=[part.id for part in parts],
            repr_sha256=creation.repr_sha256.hex() if creation.repr_sha256 else None,
            eager=s.eager and not partial and not parts and (length or 0) >= EAGER_MIN_BYTES,
        )
        self._remember(state.id, principal)
        if parts:
            state.offset, state.phase = state.length or 0, "complete"
        else:
            await s.staging.create(state.id)
            if length == 0 and not partial:
                state.phase = "complete"  # an empty file has all its bytes already
        await s.store.put(state)
        for part in parts:
            part.final_of, part.phase = state.id, "complete"
            await s.store.put(part)
        if state.phase == "complete" or state.eager:
            await self._enqueue(state.id)
        _log.info("resumable_created", upload_id=state.id, dialect=dialect, length=length)
        return state

    async def append(
        self,
        principal: Principal,
        upload_id: str,
        spec: Append,
        body: AsyncIterable[bytes],
        trailers: Trailers,
    ) -> tuple[UploadState, Appended | None]:
        """Append a request's data at `spec.offset` (PATCH)."""
        s = self._s
        check_visible(await s.store.get(upload_id), principal.sub, s.clock())
        release = _Release()
        lock = await self._lock(upload_id, release)
        try:
            state = check_visible(await s.store.get(upload_id), principal.sub, s.clock())
            self._remember(upload_id, principal)
            if state.final:
                raise errors.FINAL_UPLOAD("a final upload is assembled from its parts")
            if not state.receiving or finished_partial(state):
                await self._append_to_finished(state, spec)
                return state, None
            check_append(state, spec.offset)
            if spec.length is not None and spec.length != state.length:
                declare_length(state, spec.length, s.max_size)
                await self._save(state, state.offset, last=False, complete=False)
            return state, await self.write(state, lock, release, spec, body, trailers)
        finally:
            await lock.release()

    async def created_with_data(
        self,
        state: UploadState,
        spec: Append,
        body: AsyncIterable[bytes],
        trailers: Trailers,
    ) -> Appended:
        """A creation request's data (creation-with-upload), appended at offset 0."""
        release = _Release()
        lock = await self._lock(state.id, release)
        try:
            return await self.write(state, lock, release, spec, body, trailers)
        finally:
            await lock.release()

    async def write(
        self,
        state: UploadState,
        lock: Lock,
        release: _Release,
        spec: Append,
        body: AsyncIterable[bytes],
        trailers: Trailers,
    ) -> Appended:
        s = self._s
        limit = room(state, s.max_size)
        if spec.size is not None and spec.size > limit:
            raise errors.PAYLOAD_TOO_LARGE(f"the upload takes at most {limit} more bytes")
        if spec.empty:
            if spec.complete:  # an empty IETF append that ends the upload
                await self._save(state, state.offset, last=True, complete=True)
            return Appended("complete")
        if spec.checksum is not None:
            digests = {spec.checksum.algorithm: spec.checksum.new()}
        elif spec.trailer_checksum:  # the algorithm comes after the data: hash with each
            names = CHECKSUM_ALGORITHMS if state.dialect == "tus" else DIGEST_ALGORITHMS
            digests = {name.replace("-", ""): make() for name, make in names.items()}
        else:
            digests = {}
        writer = await s.staging.writer(state.id, state.offset, list(digests.values()))
        start = state.offset

        async def save(end: int, last: bool) -> bool:
            return await self._save(state, end, last=last, complete=spec.complete)

        appender = Appender(writer, start, lock, save)
        release.target = appender.release
        if release.asked:
            appender.release()
        late = None
        if spec.trailer_checksum and spec.checksum is None:
            late = self._late_checksum(state.dialect, trailers)
        try:
            outcome = await appender.run(_bounded(body, limit), spec.checksum, digests, late)
        finally:
            await writer.close()
        if outcome.ending == "interrupted":
            _log.info("upload_interrupted", upload_id=state.id, offset=state.offset)
        return outcome

    @staticmethod
    def _late_checksum(dialect: Dialect, trailers: Trailers) -> Callable[[], Checksum | None]:
        return lambda: trailer_checksum(dialect, trailers())

    async def read(self, principal: Principal, upload_id: str) -> UploadState:
        """The upload's state, for HEAD or GET: a request still appending is asked to
        let go first, so the offset read is final as well as durable (the draft's rule)."""
        s = self._s
        check_visible(await s.store.get(upload_id), principal.sub, s.clock())
        lock = await self._lock(upload_id, _Release())
        try:
            state = check_visible(await s.store.get(upload_id), principal.sub, s.clock())
        finally:
            await lock.release()
        self._remember(upload_id, principal)
        if not state.receiving and state.phase not in ("stored", "failed"):
            s.outbox.nudge()  # a store may wait for this owner's token (no service account)
        return state

    async def terminate(self, principal: Principal, upload_id: str) -> None:
        """DELETE: the upload and its staged bytes are gone (404 from now on)."""
        s = self._s
        check_visible(await s.store.get(upload_id), principal.sub, s.clock())
        lock = await self._lock(upload_id, _Release())
        try:
            state = check_visible(await s.store.get(upload_id), principal.sub, s.clock())
            busy = state.phase in ("complete", "storing") and not state.partial
            if busy or state.final_of is not None:
                raise errors.UPLOAD_BUSY(
                    "the upload is being stored" if busy else "the upload is part of a final one"
                )
            await discard(s.store, s.staging, state)
            s.tokens.pop(state.id, None)
        finally:
            await lock.release()
        _log.info("resumable_terminated", upload_id=upload_id)

    async def progress(self, upload_id: str, sub: str) -> UploadProgress | None:
        """`GET /api/v1/uploads/{id}` of a resumable upload (None: not one of `sub`'s)."""
        running = self._s.storer.running.get(upload_id)
        try:
            state = await self._s.store.get(upload_id)
        except StateUnavailable:
            return None
        if state is None or state.owner.sub != sub:
            return None
        if running is not None:
            running.bytes_received = state.offset
            return running
        return progress_of(state)

    # -- helpers -------------------------------------------------------------------

    async def _lock(self, upload_id: str, release: _Release) -> Lock:
        try:
            return await self._s.locker.acquire(upload_id, release, self._s.lock_wait)
        except LockTimeout:
            raise errors.UPLOAD_LOCKED("another request holds this upload; retry") from None

    def _remember(self, upload_id: str, principal: Principal) -> None:
        """The owner's token, in memory only, for a store without a service account."""
        tokens = self._s.tokens
        tokens.pop(upload_id, None)
        tokens[upload_id] = principal.token
        while len(tokens) > MAX_TOKENS:
            tokens.pop(next(iter(tokens)))

    async def _save(self, state: UploadState, end: int, *, last: bool, complete: bool) -> bool:
        """Save durable bytes up to `end` (and, when the request that ends the upload got
        all its data through, the upload's completion) unless someone else moved it."""
        s = self._s
        updated = msgspec.structs.replace(state)
        if last and complete:
            declare_length(updated, end, s.max_size)
        appended(updated, end, s.clock(), s.expiry)
        if not await s.store.advance(updated, state.offset):
            return False
        for field in ("offset", "length", "expires_at", "phase"):
            setattr(state, field, getattr(updated, field))
        s.signals.notify(state.id)
        if state.phase == "complete":
            await self._enqueue(state.id)
        return True

    async def _append_to_finished(self, state: UploadState, spec: Append) -> None:
        """A request to an upload that takes no more data: the offset is replayed, and a
        failed one is queued again (an empty append at its end)."""
        if spec.offset != state.offset:
            check_append(state, spec.offset)
        if not spec.empty:
            raise errors.PAYLOAD_TOO_LARGE("the upload is complete: it takes no more data")
        if state.phase == "failed":
            retried(state, self._s.clock(), self._s.expiry)
            await self._s.store.put(state)
            await self._enqueue(state.id)

    async def _enqueue(self, upload_id: str) -> None:
        job = StoreUpload(id=new_job_id(), upload_id=upload_id, created_at=self._s.clock())
        try:
            await self._s.outbox.add(job)
        except OutboxUnavailable as exc:
            raise errors.UPLOAD_STATE_UNAVAILABLE(f"the store could not be queued: {exc}") from None
        self._s.outbox.nudge()
