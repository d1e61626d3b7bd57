"""CompensationBacklog: every owed delete is durable before `add` returns, and is retried
with backoff (in Redis, shared by gateways under a lease; or from the local journal
while Redis is away or not configured) until the file is gone."""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import fakeredis
import msgspec
import pytest
import redis.exceptions
import structlog

from ingester_gateway.observability import Metrics
from ingester_gateway.outbox.compensations import (
    ATTEMPTS,
    BACKLOG,
    BATCH,
    LEASE,
    CompensationBacklog,
)
from ingester_gateway.outbox.events import EventPublisher
from ingester_gateway.outbox.journal import (
    FileEvent,
    Journal,
    Pending,
    PendingCompensation,
    PendingEvent,
)
from ingester_gateway.registry import NodeRecord
from tests.kit import FakeClock, run

T = TypeVar("T")
NODE = NodeRecord(id="se-1", url="http://se-1:8010", mode="rw", status="ok", priority=3)


class TopOfJitter(random.Random):
    """Always the longest wait the jitter allows: the backoff schedule shows exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Deletes:
    """The injected deleter: records each call, answers as scripted (True = gone)."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, str]] = []
        self.meanwhile: Callable[[], Awaitable[object]] | None = None  # runs during a delete

    async def __call__(self, node: NodeRecord, file_id: str) -> bool:
        self.calls.append((node.id, node.url, file_id))
        if self.meanwhile is not None:
            await self.meanwhile()
        return self.answers.pop(0) if self.answers else True

    @property
    def files(self) -> list[str]:
        return [file_id for _, _, file_id in self.calls]


class DiskFullJournal(Journal):
    async def append(self, entry: Pending) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


class World:
    """One gateway's backlog over a fake Redis (or none) and a journal in a directory."""

    def __init__(
        self,
        directory: Path,
        deletes: Deletes,
        *,
        with_redis: bool = True,
        server: fakeredis.FakeServer | None = None,
        clock: FakeClock | None = None,
        rng: random.Random | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.server = server or fakeredis.FakeServer()
        self.redis = fakeredis.FakeAsyncRedis(server=self.server) if with_redis else None
        self.journal = journal or Journal(directory)
        self.journal.open()
        self.clock = clock or FakeClock()
        self.deletes = deletes
        self.metrics = Metrics()
        self.events = EventPublisher(self.redis, self.journal)
        self.backlog = CompensationBacklog(
            self.redis,
            self.journal,
            deletes,
            self.events,
            self.metrics,
            rng=rng or TopOfJitter(),
            clock=self.clock,
        )

    def redis_down(self) -> None:
        self.server.connected = False

    def redis_up(self) -> None:
        self.server.connected = True

    async def scheduled(self) -> list[tuple[str, float]]:
        """Backlog items in Redis: (file_id, due time), soonest first."""
        assert self.redis is not None
        raw = await self.redis.zrange(BACKLOG, 0, -1, withscores=True)
        return [(msgspec.json.decode(item)["file_id"], score) for item, score in raw]

    async def attempts(self) -> dict[str, int]:
        assert self.redis is not None
        raw = await self.redis.hgetall(ATTEMPTS)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def item_ids(self) -> list[str]:
        assert self.redis is not None
        return [msgspec.json.decode(item)["id"] for item in await self.redis.zrange(BACKLOG, 0, -1)]

    def journaled(self) -> list[str]:
        return [e.file_id for e in self.journal.pending() if isinstance(e, PendingCompensation)]

    def gauge(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name)


def in_world(
    tmp_path: Path, scenario: Callable[[World], Awaitable[T]], deletes: Deletes, **kwargs: object
) -> T:
    async def go() -> T:
        world = World(tmp_path, deletes, **kwargs)  # type: ignore[arg-type]
        try:
            return await scenario(world)
        finally:
            await world.backlog.stop()
            world.journal.close()

    return run(go())


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait, in real time, for a background loop to make `condition` true."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.005)


# -- add: durable before it returns ----------------------------------------------------


def test_add_schedules_the_delete_in_redis_due_now(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        await world.backlog.add(NODE, "f-1", "checksum_mismatch")
        (raw,) = await world.redis.zrange(BACKLOG, 0, -1)  # type: ignore[union-attr]
        item = msgspec.json.decode(raw, type=PendingCompensation)
        return [
            await world.scheduled(),
            item.node_id,
            item.node_url,
            item.reason,
            world.journaled(),
        ]

    assert in_world(tmp_path, scenario, Deletes()) == [
        [("f-1", 1000.0)],
        "se-1",
        "http://se-1:8010",
        "checksum_mismatch",
        [],
    ]


def test_add_falls_back_to_the_journal_when_redis_errors(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        world.redis_down()
        await world.backlog.add(NODE, "f-1", "aborted")
        world.redis_up()
        return [world.journaled(), await world.scheduled()]

    assert in_world(tmp_path, scenario, Deletes()) == [["f-1"], []]


def test_add_without_redis_writes_the_journal(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[PendingCompensation]:
        await world.backlog.add(NODE, "f-1", "aborted")
        return [e for e in world.journal.pending() if isinstance(e, PendingCompensation)]

    (item,) = in_world(tmp_path, scenario, Deletes(), with_redis=False)
    assert (item.node_id, item.node_url, item.file_id, item.reason) == (
        "se-1",
        "http://se-1:8010",
        "f-1",
        "aborted",
    )
    assert item.created_at == 1000.0


def test_a_journaled_compensation_is_on_disk_when_add_returns(tmp_path: Path) -> None:
    async def scenario(world: World) -> bytes:
        world.redis_down()
        await world.backlog.add(NODE, "f-1", "aborted")
        (path,) = tmp_path.glob("journal-*.jsonl")  # what a crash right now would leave
        return path.read_bytes()

    assert b'"file_id":"f-1"' in in_world(tmp_path, scenario, Deletes())


def test_a_delete_that_can_be_stored_nowhere_is_logged_not_raised(tmp_path: Path) -> None:
    """The upload's own error is what the client must see; the operator gets what to
    delete by hand."""

    async def scenario(world: World) -> list[dict[str, object]]:
        world.redis_down()
        with structlog.testing.capture_logs() as logs:
            await world.backlog.add(NODE, "f-1", "aborted")
        return [e for e in logs if e["event"] == "compensation_lost"]

    (lost,) = in_world(tmp_path, scenario, Deletes(), journal=DiskFullJournal(tmp_path / "journal"))
    assert (lost["log_level"], lost["node"], lost["node_url"], lost["file_id"]) == (
        "critical",
        "se-1",
        "http://se-1:8010",
        "f-1",
    )


# -- working the Redis backlog --------------------------------------------------------


def test_a_due_item_is_deleted_and_removed(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        await world.backlog.add(NODE, "f-1", "aborted")
        await world.backlog.work_once()
        return [world.deletes.calls, await world.scheduled(), await world.attempts()]

    assert in_world(tmp_path, scenario, Deletes(True)) == [
        [("se-1", "http://se-1:8010", "f-1")],
        [],
        {},
    ]


def test_an_item_not_yet_due_is_left_alone(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[str]:
        world.clock.advance(60)
        await world.backlog.add(NODE, "f-1", "aborted")
        world.clock.now -= 1  # another gateway's clock, a second behind
        await world.backlog.work_once()
        return world.deletes.files

    assert in_world(tmp_path, scenario, Deletes()) == []


def test_a_failed_delete_is_rescheduled_with_growing_backoff(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        seen: list[object] = []
        await world.backlog.add(NODE, "f-1", "aborted")
        for _ in range(3):
            await world.backlog.work_once()
            seen.append([await world.scheduled(), await world.attempts()])
            (_, due) = (await world.scheduled())[0]
            world.clock.now = due
        return seen

    seen = in_world(tmp_path, scenario, Deletes(False, False, False))
    # TopOfJitter: the longest waits the jitter allows, doubling from 2 s
    assert [s[0] for s in seen] == [  # type: ignore[index]
        [("f-1", 1002.0)],
        [("f-1", 1006.0)],
        [("f-1", 1014.0)],
    ]
    assert [list(s[1].values()) for s in seen] == [[1], [2], [3]]  # type: ignore[index]


def test_the_retry_waits_lie_inside_the_jitter_range(tmp_path: Path) -> None:
    """Full jitter with a real seeded rng: at least half a second, at most 2**attempts."""

    async def scenario(world: World) -> list[float]:
        waits = []
        await world.backlog.add(NODE, "f-1", "aborted")
        for _ in range(6):
            now = world.clock()
            await world.backlog.work_once()
            (_, due) = (await world.scheduled())[0]
            waits.append(due - now)
            world.clock.now = due
        return waits

    waits = in_world(tmp_path, scenario, Deletes(*[False] * 6), rng=random.Random(7))
    for attempt, wait in enumerate(waits, start=1):
        assert 0.5 <= wait <= 2.0**attempt
    assert len(set(waits)) == len(waits)  # jittered, not a fixed schedule


class BottomOfJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def test_a_failed_delete_waits_at_least_half_a_second(tmp_path: Path) -> None:
    """However the jitter falls, a failing node is not hammered in a tight loop."""

    async def scenario(world: World) -> list[tuple[str, float]]:
        await world.backlog.add(NODE, "f-1", "aborted")
        await world.backlog.work_once()
        return await world.scheduled()

    deletes = Deletes(False)
    assert in_world(tmp_path, scenario, deletes, rng=BottomOfJitter()) == [("f-1", 1000.5)]


def test_the_backoff_is_capped_at_five_minutes(tmp_path: Path) -> None:
    async def scenario(world: World) -> float:
        await world.backlog.add(NODE, "f-1", "aborted")
        for _ in range(12):
            now = world.clock()
            await world.backlog.work_once()
            (_, due) = (await world.scheduled())[0]
            world.clock.now = due
        return due - now

    assert in_world(tmp_path, scenario, Deletes(*[False] * 12)) == 300.0


def test_a_success_after_failures_clears_the_attempt_count(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        await world.backlog.add(NODE, "f-1", "aborted")
        await world.backlog.work_once()
        world.clock.advance(10)
        await world.backlog.work_once()
        return [world.deletes.files, await world.scheduled(), await world.attempts()]

    assert in_world(tmp_path, scenario, Deletes(False, True)) == [["f-1", "f-1"], [], {}]


def test_an_item_leased_by_another_gateway_is_not_worked(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        assert world.redis is not None
        await world.backlog.add(NODE, "f-1", "aborted")
        (item_id,) = await world.item_ids()
        await world.redis.set(LEASE.format(item_id), "other-gateway", px=30_000)
        await world.backlog.work_once()
        seen: list[object] = [list(world.deletes.files), await world.scheduled()]
        assert await world.redis.get(LEASE.format(item_id)) == b"other-gateway"
        await world.redis.delete(LEASE.format(item_id))  # the other one is done with it
        await world.backlog.work_once()
        return [*seen, world.deletes.files]

    assert in_world(tmp_path, scenario, Deletes(False)) == [[], [("f-1", 1000.0)], ["f-1"]]


def test_the_lease_is_released_after_the_attempt(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[bytes]:
        assert world.redis is not None
        await world.backlog.add(NODE, "f-1", "aborted")
        await world.backlog.work_once()  # fails: rescheduled, lease dropped
        return list(await world.redis.keys(LEASE.format("*")))

    assert in_world(tmp_path, scenario, Deletes(False)) == []


def test_a_lease_taken_over_meanwhile_is_not_released_by_the_old_holder(tmp_path: Path) -> None:
    """Our lease expired during a slow delete and another gateway took the item: we
    must not delete its lease."""

    async def scenario(world: World) -> bytes | None:
        assert world.redis is not None
        await world.backlog.add(NODE, "f-1", "aborted")
        (item_id,) = await world.item_ids()
        lease = LEASE.format(item_id)
        client = world.redis
        world.deletes.meanwhile = lambda: client.set(lease, "other-gateway", px=30_000)
        await world.backlog.work_once()
        return await world.redis.get(lease)  # type: ignore[no-any-return]

    assert in_world(tmp_path, scenario, Deletes(False)) == b"other-gateway"


def test_two_gateways_never_delete_the_same_item_twice(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[str]:
        other = World(tmp_path / "other", world.deletes, server=world.server, clock=world.clock)
        try:
            for i in range(5):
                await world.backlog.add(NODE, f"f-{i}", "aborted")
            await asyncio.gather(world.backlog.work_once(), other.backlog.work_once())
            assert await world.scheduled() == []
            return sorted(world.deletes.files)
        finally:
            other.journal.close()

    assert in_world(tmp_path, scenario, Deletes()) == [f"f-{i}" for i in range(5)]


def test_an_item_finished_by_another_gateway_after_our_read_is_not_deleted_again(
    tmp_path: Path,
) -> None:
    """We read a batch, then another gateway works one of its items while we are busy
    with the first: when we get to it, it is gone from the backlog, and we skip it."""

    async def scenario(world: World) -> list[str]:
        other = World(tmp_path / "other", world.deletes, server=world.server, clock=world.clock)
        try:
            await world.backlog.add(NODE, "f-1", "aborted")
            await world.backlog.add(NODE, "f-2", "aborted")

            async def other_gateway_round() -> None:
                world.deletes.meanwhile = None
                await other.backlog.work_once()  # ours is leased: it deletes the other

            world.deletes.meanwhile = other_gateway_round
            await world.backlog.work_once()
            return sorted(world.deletes.files)
        finally:
            other.journal.close()

    assert in_world(tmp_path, scenario, Deletes()) == ["f-1", "f-2"]


def test_a_round_works_at_most_one_batch(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[int]:
        for i in range(BATCH + 5):
            await world.backlog.add(NODE, f"f-{i}", "aborted")
        await world.backlog.work_once()
        first = len(world.deletes.calls)
        await world.backlog.work_once()
        return [first, len(world.deletes.calls), len(await world.scheduled())]

    assert in_world(tmp_path, scenario, Deletes()) == [BATCH, BATCH + 5, 0]


def test_a_malformed_backlog_item_is_dropped(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        assert world.redis is not None
        await world.redis.zadd(BACKLOG, {b"not json": 0})
        await world.backlog.add(NODE, "f-1", "aborted")
        await world.backlog.work_once()
        return [world.deletes.files, await world.redis.zcard(BACKLOG)]

    assert in_world(tmp_path, scenario, Deletes()) == [["f-1"], 0]


# -- the journal: moved to Redis, or worked here --------------------------------------


def test_journaled_items_move_to_redis_once_it_answers(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        world.redis_down()
        await world.backlog.add(NODE, "f-1", "aborted")
        world.redis_up()
        world.clock.advance(5)
        await world.backlog.work_once()
        return [world.journaled(), await world.scheduled(), world.deletes.files]

    # moved (scheduled from now), worked in the same round, failed: due again in 2 s
    assert in_world(tmp_path, scenario, Deletes(False)) == [[], [("f-1", 1007.0)], ["f-1"]]


def test_a_dead_processs_journal_is_moved_to_redis_by_the_next_one(tmp_path: Path) -> None:
    async def scenario() -> list[object]:
        server = fakeredis.FakeServer()
        first = World(tmp_path, Deletes(), server=server)
        first.redis_down()
        await first.backlog.add(NODE, "f-1", "aborted")
        first.journal.close()
        first.redis_up()
        second = World(tmp_path, Deletes(), server=server)
        try:
            await second.backlog.work_once()
            return [second.journaled(), second.deletes.files, await second.scheduled()]
        finally:
            second.journal.close()

    assert run(scenario()) == [[], ["f-1"], []]


def test_without_redis_journal_items_are_deleted_locally(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        await world.backlog.add(NODE, "f-1", "aborted")
        await world.backlog.work_once()
        return [world.deletes.calls, world.journaled()]

    assert in_world(tmp_path, scenario, Deletes(True), with_redis=False) == [
        [("se-1", "http://se-1:8010", "f-1")],
        [],
    ]


def test_without_redis_a_failed_delete_is_retried_with_growing_backoff(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[float]:
        await world.backlog.add(NODE, "f-1", "aborted")
        tried_at = []
        for _ in range(40):  # 40 rounds a second apart
            before = len(world.deletes.calls)
            await world.backlog.work_once()
            if len(world.deletes.calls) > before:
                tried_at.append(world.clock() - 1000.0)
            world.clock.advance(1.0)
        return tried_at

    # TopOfJitter: waits of 2, 4, 8, 16 s after the failures at 0, 2, 6, 14 s
    assert in_world(tmp_path, scenario, Deletes(*[False] * 5), with_redis=False) == [
        0.0,
        2.0,
        6.0,
        14.0,
        30.0,
    ]


def test_without_redis_the_item_stays_journaled_until_it_is_deleted(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[list[str]]:
        await world.backlog.add(NODE, "f-1", "aborted")
        await world.backlog.work_once()
        kept = world.journaled()
        world.clock.advance(2.0)
        await world.backlog.work_once()
        return [kept, world.journaled()]

    assert in_world(tmp_path, scenario, Deletes(False, True), with_redis=False) == [["f-1"], []]


def test_while_redis_is_away_journal_items_are_worked_locally(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        world.redis_down()
        await world.backlog.add(NODE, "f-1", "aborted")
        with pytest.raises(redis.exceptions.ConnectionError):
            await world.backlog.work_once()  # the Redis half of the round cannot run
        return [world.deletes.files, world.journaled()]

    assert in_world(tmp_path, scenario, Deletes(True)) == [["f-1"], []]


# -- the loop and its gauges --------------------------------------------------------


def test_the_loop_works_the_backlog_and_keeps_going_while_redis_is_away(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[str]:
        await world.backlog.add(NODE, "f-1", "aborted")
        await world.backlog.start(interval=0.01)
        await eventually(lambda: _true(world.deletes.files == ["f-1"]))
        world.redis_down()
        await world.backlog.add(NODE, "f-2", "aborted")
        await eventually(lambda: _true(world.deletes.files == ["f-1", "f-2"]))
        return world.journaled()

    assert in_world(tmp_path, scenario, Deletes()) == []


async def _true(value: bool) -> bool:
    return value


def test_the_gauges_count_journal_and_redis(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[float | None]:
        def gauges() -> tuple[float | None, float | None]:
            return (
                world.gauge("ingester_compensation_backlog"),
                world.gauge("ingester_events_pending"),
            )

        for i in range(3):  # in Redis, failing: due again later
            await world.backlog.add(NODE, f"r-{i}", "aborted")
        await world.backlog.start(interval=0.01)
        await eventually(lambda: _true(gauges() == (3, 0)))
        world.redis_down()
        await world.journal.append(PendingEvent(id="e-1", event=_event("f-9")))
        for i in range(2):  # in the journal
            await world.backlog.add(NODE, f"j-{i}", "aborted")
        # Redis away: its last count stands, the journal's share is current
        await eventually(lambda: _true(gauges() == (5, 1)))
        world.redis_up()  # the journal drains into Redis, the event is delivered
        await eventually(lambda: _true(gauges() == (5, 0) and world.journal.pending() == []))
        return [float(len(await world.scheduled()))]

    assert in_world(tmp_path, scenario, Deletes(*[False] * 100)) == [5.0]


def _event(file_id: str) -> FileEvent:
    return FileEvent(
        file_id=file_id,
        storage_element_id="se-1",
        original_filename="a.txt",
        content_type="text/plain",
        file_size=1,
        stored_size=1,
        checksum="0" * 64,
        compression_algorithm="none",
        uploaded_by="alice",
        retention_policy="permanent",
        ttl_expires_at=None,
        uploaded_at="2025-01-01T00:00:00Z",
    )


def test_a_journaled_event_is_dropped_when_redis_is_no_longer_configured(
    tmp_path: Path,
) -> None:
    """A previous run had Redis; this one has no stream to deliver to."""

    async def scenario(world: World) -> list[Pending]:
        await world.journal.append(PendingEvent(id="e-1", event=_event("f-1")))
        await world.backlog.work_once()
        return world.journal.pending()

    assert in_world(tmp_path, scenario, Deletes(), with_redis=False) == []


def test_stop_ends_the_loop_promptly(tmp_path: Path) -> None:
    async def scenario(world: World) -> float:
        await world.backlog.start(interval=3600)
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await world.backlog.stop()
        return loop.time() - started

    assert in_world(tmp_path, scenario, Deletes()) < 0.5


def test_a_compensation_with_a_closed_journal_is_logged_not_raised(tmp_path: Path) -> None:
    """CompensationBacklog.add catches OSError only (then logs compensation_lost with
    what to delete); a closed journal raises AssertionError out of add."""

    async def scenario() -> None:
        server = fakeredis.FakeServer()
        client = fakeredis.FakeAsyncRedis(server=server)
        journal = Journal(tmp_path)
        journal.open()
        journal.close()

        async def delete(node: NodeRecord, file_id: str) -> bool:
            return True

        backlog = CompensationBacklog(
            client, journal, delete, EventPublisher(client, journal), Metrics()
        )
        server.connected = False
        await backlog.add(NodeRecord(id="se-1", url="http://se-1", mode="rw"), "f-1", "x")

    run(scenario())
