"""FileAnnouncer against an in-process Redis (fakeredis, with Lua): `file:created` in
artStore's format on `file-events`, added once per file however often delivery is
retried; with Redis away it raises, so that the caller queues the event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import fakeredis
import msgspec
import pytest

from ingester_gateway.admin.wire import FileEvent, FileRecord, created_event
from ingester_gateway.outbox.events import SENT_MARKER, SENT_MARKER_TTL, FileAnnouncer
from ingester_gateway.runtime.redis_io import REDIS_ERRORS
from tests.kit import run

T = TypeVar("T")
STREAM = "file-events"
NOW = "2026-01-02T03:04:05.678Z"


def record(file_id: str = "f-1", **changes: object) -> FileRecord:
    fields: dict[str, object] = {
        "file_id": file_id,
        "original_filename": "report.pdf",
        "storage_filename": "report.pdf.zst",
        "file_size": 400,
        "checksum_sha256": "b" * 64,
        "content_type": "application/pdf",
        "description": "q3",
        "storage_element_id": "se-1",
        "storage_path": f"/files/{file_id}",
        "compressed": True,
        "compression_algorithm": "zstd",
        "original_size": 1000,
        "uploaded_by": "alice",
        "upload_source_ip": "10.0.0.7",
        "created_at": NOW,
        "updated_at": NOW,
        "retention_policy": "permanent",
        "user_metadata": {"project": "x", "_ingester": {"original_sha256": "a" * 64}},
        **changes,
    }
    return FileRecord(**fields)  # type: ignore[arg-type]


def event(file_id: str = "f-1") -> FileEvent:
    return created_event(record(file_id), NOW)


class World:
    def __init__(self, stream: str = STREAM) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeAsyncRedis(server=self.server)
        self.announcer = FileAnnouncer(self.redis, stream)

    async def entries(self, stream: str = STREAM) -> list[dict[str, str]]:
        raw = await self.redis.xrange(stream)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]


def in_world(scenario: Callable[[World], Awaitable[T]], **kwargs: str) -> T:
    return run(scenario(World(**kwargs)))


def test_the_entry_carries_exactly_the_contracts_fields() -> None:
    async def scenario(world: World) -> list[dict[str, str]]:
        await world.announcer.announce(event())
        return await world.entries()

    (entry,) = in_world(scenario)
    assert list(entry) == ["event_type", "timestamp", "file_id", "storage_element_id", "metadata"]
    assert {k: v for k, v in entry.items() if k != "metadata"} == {
        "event_type": "file:created",
        "timestamp": NOW,
        "file_id": "f-1",
        "storage_element_id": "se-1",
    }


def test_the_metadata_is_one_json_string_of_the_file_record() -> None:
    async def scenario(world: World) -> list[dict[str, str]]:
        await world.announcer.announce(event())
        return await world.entries()

    (entry,) = in_world(scenario)
    assert msgspec.json.decode(entry["metadata"], type=FileRecord) == record()
    assert list(msgspec.json.decode(entry["metadata"])) == list(FileRecord.__struct_fields__)


def test_a_file_announced_twice_is_added_once() -> None:
    async def scenario(world: World) -> list[object]:
        first = await world.announcer.announce(event())
        again = await world.announcer.announce(event())  # a retried delivery
        return [first, again, len(await world.entries())]

    assert in_world(scenario) == [True, False, 1]


def test_each_file_gets_its_own_entry() -> None:
    async def scenario(world: World) -> list[str]:
        for file_id in ("f-1", "f-2", "f-3"):
            assert await world.announcer.announce(event(file_id))
        return [e["file_id"] for e in await world.entries()]

    assert in_world(scenario) == ["f-1", "f-2", "f-3"]


def test_another_event_type_for_the_same_file_is_not_taken_for_a_repeat() -> None:
    async def scenario(world: World) -> list[str]:
        created = event()
        updated = msgspec.structs.replace(created, event_type="file:updated")
        await world.announcer.announce(created)
        await world.announcer.announce(updated)
        return [e["event_type"] for e in await world.entries()]

    assert in_world(scenario) == ["file:created", "file:updated"]


def test_the_sent_marker_outlives_retries_but_expires() -> None:
    """It must last longer than a redelivery can be late, but not pile up forever."""

    async def scenario(world: World) -> int:
        await world.announcer.announce(event())
        return int(await world.redis.ttl(SENT_MARKER.format("file:created:f-1")))

    ttl = in_world(scenario)
    assert SENT_MARKER_TTL - 5 <= ttl <= SENT_MARKER_TTL
    assert 86_400 <= SENT_MARKER_TTL <= 30 * 86_400


def test_the_stream_name_is_the_one_configured() -> None:
    async def scenario(world: World) -> list[int]:
        await world.announcer.announce(event())
        return [await world.redis.xlen("artstore-events"), await world.redis.xlen(STREAM)]

    assert in_world(scenario, stream="artstore-events") == [1, 0]


def test_with_redis_down_announce_raises_and_a_later_delivery_adds_the_entry_once() -> None:
    """The caller queues the event on the error; nothing was marked sent meanwhile."""

    async def scenario(world: World) -> list[object]:
        world.server.connected = False
        with pytest.raises(REDIS_ERRORS):
            await world.announcer.announce(event())
        world.server.connected = True
        delivered = await world.announcer.announce(event())
        again = await world.announcer.announce(event())
        return [delivered, again, len(await world.entries())]

    assert in_world(scenario) == [True, False, 1]
