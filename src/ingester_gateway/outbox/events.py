"""`file:created` on the Redis stream `file-events`, in artStore's format, for when no
Admin Module is configured to announce stored files itself (with one, the gateway
registers the file and the Admin Module announces it).

Each file's event is added at most once, however often delivery is retried: a Lua
script sets a per-file marker and adds the entry in one atomic step."""

from __future__ import annotations

import redis.asyncio as aioredis

from ingester_gateway.admin.wire import FileEvent

SENT_MARKER = "ingester:event-sent:{}"
SENT_MARKER_TTL = 7 * 86400

_ADD_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
end
return false
"""


class FileAnnouncer:
    def __init__(
        self, client: aioredis.Redis, stream: str = "file-events", maxlen: int = 10_000
    ) -> None:
        self._stream = stream
        self._maxlen = maxlen
        self._script = client.register_script(_ADD_ONCE)

    async def announce(self, event: FileEvent) -> bool:
        """Add the event unless it was added before; True when added now. Raises
        Redis's errors when Redis cannot be reached."""
        added = await self._script(
            keys=[self._stream, SENT_MARKER.format(event.event_type + ":" + event.file_id)],
            args=[self._maxlen, SENT_MARKER_TTL, *event.stream_fields()],
        )
        return added is not None
