"""Progress of uploads in flight and recently finished, readable by their uploader."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from ingester_gateway.models import UploadProgress


class ProgressBook:
    """Bounded in-memory book: finished entries are kept for `retention` seconds."""

    def __init__(
        self,
        retention: float = 3600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[str, UploadProgress]] = OrderedDict()
        # Finish times in finishing order; always a subset of `_entries`.
        self._finished_at: OrderedDict[str, float] = OrderedDict()
        self._retention = retention
        self._max = max_entries
        self._clock = clock

    def open(self, upload_id: str, owner: str, progress: UploadProgress) -> bool:
        """Register a new upload; False if the id is already taken."""
        self._expire()
        if upload_id in self._entries:
            return False
        while len(self._entries) >= self._max:
            # Finished entries go first; running ones only when nothing else is left.
            if self._finished_at:
                oldest, _ = self._finished_at.popitem(last=False)
                del self._entries[oldest]
            else:
                self._entries.popitem(last=False)
        self._entries[upload_id] = (owner, progress)
        return True

    def close(self, upload_id: str) -> None:
        if upload_id in self._entries:  # an entry evicted while running is not recorded
            self._finished_at[upload_id] = self._clock()
            self._finished_at.move_to_end(upload_id)

    def get(self, upload_id: str, owner: str) -> UploadProgress | None:
        """The entry if it exists and `owner` uploaded it (others see nothing)."""
        self._expire()
        entry = self._entries.get(upload_id)
        if entry is None or entry[0] != owner:
            return None
        return entry[1]

    def _expire(self) -> None:
        horizon = self._clock() - self._retention
        while self._finished_at:
            oldest, finished = next(iter(self._finished_at.items()))
            if finished > horizon:
                break
            del self._finished_at[oldest]
            del self._entries[oldest]
