"""The artStore Admin Module's service-discovery document (`INGESTER_REGISTRY=artstore`):
key `artstore:storage_elements`, changes announced on `artstore:service_discovery`."""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from ingester_gateway.registry import NodeRecord, NodeStatus

DOCUMENT_KEY = "artstore:storage_elements"
CHANNEL = "artstore:service_discovery"

_AVAILABLE = frozenset({"online", "ok", "healthy", "active", "available", "up"})


class AdminStorageElement(msgspec.Struct, kw_only=True):
    id: str | int  # the Admin's database id: not the node's identity
    api_url: str
    element_id: str | None = None  # the SE's own id ("se-local-01"): the node's identity
    mode: str
    name: str | None = None
    status: str | None = None
    capacity_bytes: int | None = None
    used_bytes: int | None = None
    priority: int = 100
    is_writable: bool | None = None
    is_available: bool | None = None


class AdminDocument(msgspec.Struct):
    storage_elements: list[AdminStorageElement]
    version: int | str | None = None
    timestamp: float | str | None = None
    count: int | None = None


_document = msgspec.json.Decoder(AdminDocument)


def parse_document(raw: bytes) -> list[NodeRecord]:
    """Node records from the Admin document (pure). Unknown fields are ignored."""
    doc = _document.decode(raw)
    records = []
    for se in doc.storage_elements:
        available = (
            se.is_available
            if se.is_available is not None
            else ((se.status or "online").lower() in _AVAILABLE)
        )
        status: NodeStatus = "ok" if available else "down"
        mode = se.mode.lower()
        if se.is_writable is False and mode in ("edit", "rw"):
            mode = "ro"  # the Admin Module says it takes no writes, whatever its mode
        free = None
        if se.capacity_bytes is not None and se.used_bytes is not None:
            free = max(0, se.capacity_bytes - se.used_bytes)
        records.append(
            NodeRecord(
                id=se.element_id or str(se.id),
                url=se.api_url,
                mode=mode,
                status=status,
                priority=se.priority,
                capacity_total=se.capacity_bytes,
                capacity_used=se.used_bytes,
                capacity_available=free,
            )
        )
    return records


async def load_nodes(client: aioredis.Redis) -> list[NodeRecord]:
    """Loader for `RedisWatchedRegistry`; no document means no nodes. A malformed one
    raises ValueError, so the watcher keeps the last good view."""
    raw = await client.get(DOCUMENT_KEY)
    if raw is None:
        return []
    try:
        return parse_document(raw if isinstance(raw, bytes) else raw.encode())
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed {DOCUMENT_KEY}: {exc}") from None
