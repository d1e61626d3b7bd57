"""`file.uploaded` events on the Redis stream `file-events` (XADD, MAXLEN ~10000).

Each event is added at most once, however often delivery is retried: a Lua script
sets a per-file marker and adds the entry in one atomic step. When Redis cannot be
reached, the event waits in the local journal and the reconciler delivers it later,
so a stored file's event is late rather than lost (or doubled)."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from ingester_gateway.auth.verify import Principal
from ingester_gateway.models import UploadResult
from ingester_gateway.outbox.journal import FileEvent, Journal, PendingEvent
from ingester_gateway.runtime.redis_io import REDIS_ERRORS
from ingester_gateway.upload.ports import RecordUnavailable

EVENT_TYPE = "file.uploaded"
SENT_MARKER = "ingester:event-sent:{}"
SENT_MARKER_TTL = 7 * 86400

_ADD_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
end
return false
"""


class EventsUnavailable(RecordUnavailable):
    """The event could neither be added to the stream nor journaled."""


def file_event(result: UploadResult, uploaded_by: str) -> FileEvent:
    return FileEvent(
        file_id=result.file_id,
        storage_element_id=result.storage_element_id,
        original_filename=result.original_filename,
        content_type=result.content_type,
        file_size=result.file_size,
        stored_size=result.stored_size,
        checksum=result.checksum,
        compression_algorithm=result.compression_algorithm,
        uploaded_by=uploaded_by,
        retention_policy=result.retention_policy,
        ttl_expires_at=result.ttl_expires_at,
        uploaded_at=result.uploaded_at,
    )


def stream_fields(event: FileEvent) -> list[str]:
    """Field/value pairs as the stream entry carries them (all strings)."""
    fields = ["event_type", EVENT_TYPE]
    for name in FileEvent.__struct_fields__:
        value = getattr(event, name)
        fields += [name, "" if value is None else str(value)]
    return fields


class EventPublisher:
    def __init__(
        self,
        client: aioredis.Redis | None,
        journal: Journal,
        stream: str = "file-events",
        maxlen: int = 10_000,
    ) -> None:
        self._redis = client
        self._journal = journal
        self._stream = stream
        self._maxlen = maxlen
        self._script = client.register_script(_ADD_ONCE) if client is not None else None

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    async def stored(self, result: UploadResult, principal: Principal) -> None:
        """The upload driver's record of a stored file: its event."""
        await self.file_uploaded(result, principal.sub)

    async def file_uploaded(self, result: UploadResult, uploaded_by: str) -> None:
        """Announce a stored upload; without Redis configured there is no stream."""
        if not self.enabled:
            return
        event = file_event(result, uploaded_by)
        try:
            await self.deliver(event)
            return
        except REDIS_ERRORS:
            pass
        try:
            await self._journal.append(PendingEvent(id=uuid.uuid4().hex, event=event))
        except OSError as exc:
            raise EventsUnavailable(f"Redis unreachable and journal failed: {exc}") from None

    async def deliver(self, event: FileEvent) -> bool:
        """Add the event unless it was added before; True when added now."""
        assert self._script is not None
        added = await self._script(
            keys=[self._stream, SENT_MARKER.format(event.file_id)],
            args=[self._maxlen, SENT_MARKER_TTL, *stream_fields(event)],
        )
        return added is not None
