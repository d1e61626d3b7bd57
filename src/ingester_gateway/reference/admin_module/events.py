"""`file:created` / `file:updated` / `file:deleted` on the Redis stream `file-events`,
in the format artStore's Query Module consumes:

    XADD file-events MAXLEN ~ N * event_type file:created timestamp <ISO>
         file_id <id> storage_element_id <id> metadata <the record as one JSON string>

An announcement Redis does not take is tried again for up to `retry_seconds` (long
enough to ride out a Sentinel failover), with backoff, then lost like the real Admin
Module loses it: the registry still answers, and the loss is logged as an error naming
the file. A retry never adds the entry twice: each announcement sets a marker of its own
in the same script that adds it, so one whose answer was lost is not added again.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from ingester_gateway.observability import get_logger
from ingester_gateway.reference.admin_module.records import FileRecord
from ingester_gateway.resilience import Backoff
from ingester_gateway.runtime.redis_io import REDIS_ERRORS

EventType = Literal["file:created", "file:updated", "file:deleted"]
STREAM = "file-events"
MARKER = "admin-module:event-added:{}"
MARKER_TTL = 3600
RETRY_SECONDS = 3.0
_BACKOFF = Backoff(base=0.1, cap=1.0, floor=0.05)

_ADD_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
end
return false
"""

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
    def __init__(
        self,
        client: aioredis.Redis,
        stream: str = STREAM,
        maxlen: int = 10_000,
        retry_seconds: float = RETRY_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self._script = client.register_script(_ADD_ONCE)
        self._stream = stream
        self._maxlen = maxlen
        self._retry_seconds = retry_seconds
        self._rng = rng or random.Random()

    async def announce(self, event_type: EventType, record: FileRecord, timestamp: str) -> bool:
        """Add the event; False (and an error line) when Redis did not take it in time."""
        fields = event_fields(event_type, record, timestamp)
        pairs = [part for field in fields.items() for part in field]
        marker = MARKER.format(uuid.uuid4().hex)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_seconds
        attempt = 0
        while True:
            try:
                await self._script(
                    keys=[self._stream, marker], args=[self._maxlen, MARKER_TTL, *pairs]
                )
                return True
            except REDIS_ERRORS as exc:
                attempt += 1
                delay = _BACKOFF.delay(attempt, self._rng)
                if loop.time() + delay < deadline:
                    await asyncio.sleep(delay)
                    continue
                _log.error(
                    "file_event_lost",
                    event_type=event_type,
                    file_id=record.file_id,
                    stream=self._stream,
                    attempts=attempt,
                    error=str(exc) or type(exc).__name__,
                )
                return False
