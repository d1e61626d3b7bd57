"""EventPublisher against an in-process Redis (fakeredis, with Lua): each stored file is
announced once on the stream, late (through the journal) rather than lost or doubled."""

from __future__ import annotations

import errno
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import fakeredis
import pytest
import redis.exceptions

from ingester_gateway.models import UploadResult
from ingester_gateway.observability import Metrics
from ingester_gateway.outbox.compensations import CompensationBacklog
from ingester_gateway.outbox.events import (
    SENT_MARKER,
    EventPublisher,
    EventsUnavailable,
    file_event,
)
from ingester_gateway.outbox.journal import Journal, Pending, PendingEvent
from ingester_gateway.registry import NodeRecord
from tests.kit import run

STREAM = "file-events"
T = TypeVar("T")


def result(file_id: str = "f-1", **changes: object) -> UploadResult:
    fields: dict[str, object] = {
        "file_id": file_id,
        "original_filename": "report.pdf",
        "storage_filename": "report.pdf",
        "content_type": "application/pdf",
        "file_size": 1000,
        "stored_size": 400,
        "compressed": True,
        "compression_algorithm": "zstd",
        "compression_ratio": 2.5,
        "checksum": "a" * 64,
        "stored_checksum": "b" * 64,
        "uploaded_at": "2025-01-02T03:04:05Z",
        "storage_element_id": "se-1",
        "storage_element_url": "http://se-1:8010",
        "retention_policy": "permanent",
        "ttl_expires_at": None,
        "upload_id": "u-1",
        **changes,
    }
    return UploadResult(**fields)  # type: ignore[arg-type]


class DiskFullJournal(Journal):
    """A journal whose disk refuses every write."""

    async def append(self, entry: Pending) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


class World:
    """A fake Redis server, a client of it, and an open journal in `directory`."""

    def __init__(self, directory: Path, journal: Journal | None = None) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeAsyncRedis(server=self.server)
        self.journal = journal or Journal(directory)
        self.journal.open()
        self.events = EventPublisher(self.redis, self.journal, STREAM)

    def backlog(self) -> CompensationBacklog:
        async def never_called(node: NodeRecord, file_id: str) -> bool:
            raise AssertionError("no compensation was queued")

        return CompensationBacklog(
            self.redis, self.journal, never_called, self.events, Metrics(), rng=random.Random(0)
        )

    async def entries(self) -> list[dict[str, str]]:
        raw = await self.redis.xrange(STREAM)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]


def in_world(tmp_path: Path, scenario: Callable[[World], Awaitable[T]]) -> T:
    async def go() -> T:
        world = World(tmp_path)
        try:
            return await scenario(world)
        finally:
            world.journal.close()

    return run(go())


def test_an_upload_is_announced_on_the_stream_with_every_field_as_text(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[dict[str, str]]:
        await world.events.file_uploaded(result(), uploaded_by="alice")
        return await world.entries()

    (entry,) = in_world(tmp_path, scenario)
    assert entry == {
        "event_type": "file.uploaded",
        "file_id": "f-1",
        "storage_element_id": "se-1",
        "original_filename": "report.pdf",
        "content_type": "application/pdf",
        "file_size": "1000",
        "stored_size": "400",
        "checksum": "a" * 64,
        "compression_algorithm": "zstd",
        "uploaded_by": "alice",
        "retention_policy": "permanent",
        "ttl_expires_at": "",  # None travels as an empty string
        "uploaded_at": "2025-01-02T03:04:05Z",
    }


def test_an_upload_announced_twice_is_added_once(tmp_path: Path) -> None:
    async def scenario(world: World) -> int:
        await world.events.file_uploaded(result(), uploaded_by="alice")
        await world.events.file_uploaded(result(), uploaded_by="alice")  # a retried step
        assert world.journal.pending() == []
        return int(await world.redis.xlen(STREAM))

    assert in_world(tmp_path, scenario) == 1


def test_deliver_says_whether_it_added_the_event(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[bool]:
        first = await world.events.deliver(file_event(result("f-1"), "alice"))
        again = await world.events.deliver(file_event(result("f-1"), "alice"))
        other = await world.events.deliver(file_event(result("f-2"), "alice"))
        return [first, again, other]

    assert in_world(tmp_path, scenario) == [True, False, True]


def test_each_file_gets_its_own_event(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[str]:
        for file_id in ("f-1", "f-2", "f-3"):
            await world.events.file_uploaded(result(file_id), uploaded_by="alice")
        return [e["file_id"] for e in await world.entries()]

    assert in_world(tmp_path, scenario) == ["f-1", "f-2", "f-3"]


def test_the_sent_marker_outlives_retries_but_expires(tmp_path: Path) -> None:
    """It must last longer than any redelivery can be late, but not pile up forever."""

    async def scenario(world: World) -> int:
        await world.events.file_uploaded(result("f-1"), uploaded_by="alice")
        return int(await world.redis.ttl(SENT_MARKER.format("f-1")))

    assert 86_400 <= in_world(tmp_path, scenario) <= 30 * 86_400


def test_when_redis_is_down_the_event_waits_in_the_journal(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        world.server.connected = False
        await world.events.file_uploaded(result("f-1"), uploaded_by="alice")
        world.server.connected = True
        return [world.journal.pending(), await world.redis.xlen(STREAM)]

    (pending,), stream_length = in_world(tmp_path, scenario)
    assert isinstance(pending, PendingEvent)
    assert pending.event.file_id == "f-1"
    assert pending.event.uploaded_by == "alice"
    assert stream_length == 0


def test_the_backlog_delivers_a_journaled_event_exactly_once(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        world.server.connected = False
        await world.events.file_uploaded(result("f-1"), uploaded_by="alice")
        backlog = world.backlog()
        with pytest.raises(redis.exceptions.ConnectionError):
            await backlog.work_once()  # still down: the event stays journaled
        assert len(world.journal.pending()) == 1
        world.server.connected = True
        await backlog.work_once()
        await backlog.work_once()
        return [world.journal.pending(), [e["file_id"] for e in await world.entries()]]

    assert in_world(tmp_path, scenario) == [[], ["f-1"]]


def test_an_event_that_reached_redis_before_the_error_is_not_doubled(tmp_path: Path) -> None:
    """The ambiguous case: the script ran but its answer was lost, so the gateway
    journaled the event as well. The marker makes the second delivery a no-op."""

    async def scenario(world: World) -> list[object]:
        await world.events.file_uploaded(result("f-1"), uploaded_by="alice")
        world.server.connected = False
        await world.events.file_uploaded(result("f-1"), uploaded_by="alice")
        world.server.connected = True
        assert len(world.journal.pending()) == 1
        await world.backlog().work_once()
        return [world.journal.pending(), await world.redis.xlen(STREAM)]

    assert in_world(tmp_path, scenario) == [[], 1]


def test_a_journaled_event_survives_a_restart_and_is_delivered_by_the_next_process(
    tmp_path: Path,
) -> None:
    async def scenario() -> int:
        first = World(tmp_path)
        first.server.connected = False
        await first.events.file_uploaded(result("f-1"), uploaded_by="alice")
        first.journal.close()  # the process ends with Redis still away

        second = World(tmp_path)  # a new process, Redis back (a fresh server)
        try:
            await second.backlog().work_once()
            assert second.journal.pending() == []
            return int(await second.redis.xlen(STREAM))
        finally:
            second.journal.close()

    assert run(scenario()) == 1


def test_redis_down_and_journal_failing_raise_events_unavailable(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, journal=DiskFullJournal(tmp_path))
        try:
            world.server.connected = False
            with pytest.raises(EventsUnavailable, match="No space left"):
                await world.events.file_uploaded(result("f-1"), uploaded_by="alice")
        finally:
            world.journal.close()

    run(scenario())


def test_a_failing_journal_does_not_matter_while_redis_answers(tmp_path: Path) -> None:
    async def scenario() -> int:
        world = World(tmp_path, journal=DiskFullJournal(tmp_path))
        try:
            await world.events.file_uploaded(result("f-1"), uploaded_by="alice")
            return int(await world.redis.xlen(STREAM))
        finally:
            world.journal.close()

    assert run(scenario()) == 1


def test_without_redis_there_is_no_stream_and_nothing_is_journaled(tmp_path: Path) -> None:
    async def scenario() -> list[Pending]:
        journal = Journal(tmp_path)
        journal.open()
        try:
            events = EventPublisher(None, journal)
            assert not events.enabled
            await events.file_uploaded(result(), uploaded_by="alice")
            return journal.pending()
        finally:
            journal.close()

    assert run(scenario()) == []


def test_a_closed_journal_with_redis_down_is_events_unavailable(tmp_path: Path) -> None:
    """The driver compensates and answers 503 on EventsUnavailable. A journal that is
    not open (or already closed by Gateway.stop while an upload finishes) raises
    AssertionError ('journal not open'; TypeError under -O) instead: the stored file
    is neither announced nor compensated."""

    async def scenario() -> None:
        server = fakeredis.FakeServer()
        journal = Journal(tmp_path)
        journal.open()
        journal.close()
        events = EventPublisher(fakeredis.FakeAsyncRedis(server=server), journal)
        server.connected = False
        with pytest.raises(EventsUnavailable):
            await events.file_uploaded(result(), uploaded_by="alice")

    run(scenario())
