"""Progress of uploads in flight and recently finished, readable by their uploader."""

from __future__ import annotations

import time
from collections import OrderedDict

from ingester_gateway.models import UploadProgress


class ProgressBook:
    """Bounded in-memory book: finished entries are kept for `retention` seconds."""

    def __init__(self, retention: float = 3600.0, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, tuple[str, UploadProgress]] = OrderedDict()
        self._finished_at: dict[str, float] = {}
        self._retention = retention
        self._max = max_entries

    def open(self, upload_id: str, owner: str, progress: UploadProgress) -> bool:
        """Register a new upload; False if the id is already taken."""
        self._expire()
        if upload_id in self._entries:
            return False
        self._entries[upload_id] = (owner, progress)
        return True

    def close(self, upload_id: str) -> None:
        self._finished_at[upload_id] = time.monotonic()

    def get(self, upload_id: str, owner: str) -> UploadProgress | None:
        """The entry if it exists and `owner` uploaded it (others see nothing)."""
        entry = self._entries.get(upload_id)
        if entry is None or entry[0] != owner:
            return None
        return entry[1]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries))
            finished = self._finished_at.get(oldest)
            expired = finished is not None and now - finished >= self._retention
            if not expired and len(self._entries) < self._max:
                break
            del self._entries[oldest]
            self._finished_at.pop(oldest, None)
