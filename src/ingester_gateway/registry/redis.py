"""The gateway's own node records in Redis (`INGESTER_REGISTRY=redis`).

ingester:node:<id>        JSON NodeAnnouncement, EX ttl (kept alive by heartbeats;
                          no expiry for nodes an operator added by hand)
ingester:nodes            set of known ids (expired ones are pruned on load)
ingester:nodes:draining   set of ids taking no new uploads
ingester:nodes:events     pub/sub channel: {"event": ..., "id": ...} on every change
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from ingester_gateway.registry import NodeRecord, NodeStatus

NODE_KEY = "ingester:node:{}"
NODES_INDEX = "ingester:nodes"
DRAINING = "ingester:nodes:draining"
CHANNEL = "ingester:nodes:events"

Event = Literal["registered", "updated", "deregistered", "draining", "undrained"]


class NodeAnnouncement(msgspec.Struct, frozen=True):
    """What a Storage Element (or an operator) publishes about itself."""

    id: str
    url: str
    mode: str
    status: NodeStatus = "ok"
    priority: int = 100
    capacity_total: int | None = None
    capacity_used: int | None = None
    capacity_available: int | None = None
    heartbeat_at: float | None = None  # unix time; None for operator-managed records
    ttl: float | None = None  # seconds a heartbeat stays valid


class _Change(msgspec.Struct):
    event: str
    id: str


_announcement = msgspec.json.Decoder(NodeAnnouncement)


def to_record(a: NodeAnnouncement, draining: bool, now: float) -> NodeRecord | None:
    """The node as the gateway should see it; None once its heartbeat has lapsed."""
    expires_at = None
    if a.heartbeat_at is not None and a.ttl is not None:
        expires_at = a.heartbeat_at + a.ttl
        if expires_at < now:
            return None
    return NodeRecord(
        id=a.id,
        url=a.url,
        mode=a.mode,
        status=a.status,
        priority=a.priority,
        capacity_total=a.capacity_total,
        capacity_used=a.capacity_used,
        capacity_available=a.capacity_available,
        last_seen=a.heartbeat_at,
        expires_at=expires_at,
        draining=draining,
    )


class RedisNodeBook:
    """Reads and writes node records; used by SEs (heartbeats), the `nodes` CLI and
    the gateway's registry."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client

    async def announce(self, node: NodeAnnouncement, event: Event | None = None) -> None:
        """Write the record (EX ttl when it has one) and, for a change, tell everyone."""
        key = NODE_KEY.format(node.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            if node.ttl is not None:
                pipe.set(key, msgspec.json.encode(node), px=int(node.ttl * 1000))
            else:
                pipe.set(key, msgspec.json.encode(node))
            pipe.sadd(NODES_INDEX, node.id)
            if event is not None:
                pipe.publish(CHANNEL, msgspec.json.encode(_Change(event, node.id)))
            await pipe.execute()

    async def remove(self, node_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(NODE_KEY.format(node_id))
            pipe.srem(NODES_INDEX, node_id)
            pipe.srem(DRAINING, node_id)
            pipe.publish(CHANNEL, msgspec.json.encode(_Change("deregistered", node_id)))
            deleted, *_ = await pipe.execute()
        return bool(deleted)

    async def set_draining(self, node_id: str, draining: bool) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            if draining:
                pipe.sadd(DRAINING, node_id)
            else:
                pipe.srem(DRAINING, node_id)
            event = "draining" if draining else "undrained"
            pipe.publish(CHANNEL, msgspec.json.encode(_Change(event, node_id)))
            await pipe.execute()

    async def announcements(self) -> tuple[list[NodeAnnouncement], set[str]]:
        """All live records and the draining set; ids whose record expired are pruned."""
        ids = sorted(_text(m) for m in await self.redis.smembers(NODES_INDEX))
        draining = {_text(m) for m in await self.redis.smembers(DRAINING)}
        if not ids:
            return [], draining
        raws = await self.redis.mget([NODE_KEY.format(i) for i in ids])
        found: list[NodeAnnouncement] = []
        gone: list[str] = []
        for node_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                gone.append(node_id)
                continue
            try:
                found.append(_announcement.decode(raw))
            except msgspec.DecodeError:
                continue  # a foreign or broken record must not hide the others
        if gone:
            await self.redis.srem(NODES_INDEX, *gone)
        return found, draining


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def load_nodes(client: aioredis.Redis) -> list[NodeRecord]:
    """Loader for `RedisWatchedRegistry`."""
    announcements, draining = await RedisNodeBook(client).announcements()
    now = time.time()
    records = (to_record(a, a.id in draining, now) for a in announcements)
    return [r for r in records if r is not None]
