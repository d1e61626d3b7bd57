"""`file:created` / `file:updated` / `file:deleted` on the Redis stream `file-events`,
in the format artStore's Query Module consumes:

    XADD file-events MAXLEN ~ N * event_type file:created timestamp <ISO>
         file_id <id> storage_element_id <id> metadata <the record as one JSON string>

Like the real Admin Module, an announcement Redis does not take is lost, not retried:
the registry still answers, and the loss is logged as an error naming the file.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import redis.asyncio as aioredis

from ingester_gateway.observability import get_logger
from ingester_gateway.reference.admin_module.records import FileRecord
from ingester_gateway.runtime.redis_io import REDIS_ERRORS

EventType = Literal["file:created", "file:updated", "file:deleted"]
STREAM = "file-events"

_log = get_logger("ingester_gateway.reference.admin_module")
_encode = msgspec.json.Encoder().encode


def event_fields(event_type: EventType, record: FileRecord, timestamp: str) -> dict[str, str]:
    """The stream entry's fields, in order (pure)."""
    return {
        "event_type": event_type,
        "timestamp": timestamp,
        "file_id": record.file_id,
        "storage_element_id": record.storage_element_id,
        "metadata": _encode(record).decode(),
    }


class FileEventAnnouncer:
    def __init__(self, client: aioredis.Redis, stream: str = STREAM, maxlen: int = 10_000) -> None:
        self._redis = client
        self._stream = stream
        self._maxlen = maxlen

    async def announce(self, event_type: EventType, record: FileRecord, timestamp: str) -> bool:
        """Add the event; False (and an error line) when Redis did not take it."""
        fields = event_fields(event_type, record, timestamp)
        try:
            await self._redis.xadd(
                self._stream,
                fields,  # type: ignore[arg-type]  # redis-py's stubs want a dict of its own unions
                maxlen=self._maxlen,
                approximate=True,
            )
        except REDIS_ERRORS as exc:
            _log.error(
                "file_event_lost",
                event_type=event_type,
                file_id=record.file_id,
                stream=self._stream,
                error=str(exc) or type(exc).__name__,
            )
            return False
        return True
