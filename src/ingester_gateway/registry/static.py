"""Static registry: the Storage Elements named in `INGESTER_STORAGE_ELEMENTS`."""

from __future__ import annotations

from ingester_gateway.config import StorageElementConfig
from ingester_gateway.registry import NodeRecord


class StaticRegistry:
    def __init__(self, configured: list[StorageElementConfig]) -> None:
        self._nodes = [
            NodeRecord(id=c.id, url=c.url, mode=c.mode, priority=c.priority) for c in configured
        ]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def nodes(self) -> list[NodeRecord]:
        return self._nodes

    def is_stale(self) -> bool:
        return False  # the configuration is the source; it cannot go away
