"""The Outbox: every job is durable before `add` returns (Redis, else the journal), and
is worked by its kind's handler, with backoff, until the handler says it is done (in
Redis, shared by gateways under a lease; or from the local journal while Redis is away
or not configured)."""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import msgspec
import pytest
import redis.exceptions
import structlog

from ingester_gateway.admin.wire import FileEvent, FileRegistration
from ingester_gateway.observability import Metrics
from ingester_gateway.outbox.jobs import (
    KINDS,
    AnnounceFile,
    DeleteFile,
    Job,
    RegisterFile,
    kind_of,
)
from ingester_gateway.outbox.journal import Journal
from ingester_gateway.outbox.queue import (
    BATCH,
    LEASE,
    LEGACY_BACKLOG,
    Outbox,
    OutboxUnavailable,
    attempts_key,
    due_key,
    since_key,
)
from ingester_gateway.registry import NodeRecord
from tests.kit import FakeClock, run

T = TypeVar("T")
NODE = NodeRecord(id="se-1", url="http://se-1:8010", mode="rw", status="ok")
DELETE, REGISTER, ANNOUNCE = "compensation", "registration", "announcement"


def delete_file(file_id: str = "f-1", created_at: float = 1000.0, **changes: Any) -> DeleteFile:
    fields: dict[str, Any] = {
        "id": f"job-{file_id}",
        "node_id": "se-1",
        "node_url": "http://se-1:8010",
        "file_id": file_id,
        "reason": "aborted",
        "created_at": created_at,
        **changes,
    }
    return DeleteFile(**fields)


def register_file(file_id: str = "f-2", created_at: float = 1000.0) -> RegisterFile:
    registration = FileRegistration(
        file_id=file_id,
        original_filename="a.txt",
        storage_filename="a.txt",
        file_size=1,
        checksum_sha256="0" * 64,
        content_type="text/plain",
        retention_policy="permanent",
        storage_element_id="se-1",
        storage_path=f"/files/{file_id}",
        compressed=False,
        uploaded_by="alice",
    )
    return RegisterFile(
        id=f"job-{file_id}",
        registration=registration,
        node_id="se-1",
        node_url="http://se-1:8010",
        created_at=created_at,
    )


def announce_file(file_id: str = "f-3", created_at: float = 1000.0) -> AnnounceFile:
    event = FileEvent(
        event_type="file:created",
        timestamp="2025-01-01T00:00:00.000Z",
        file_id=file_id,
        storage_element_id="se-1",
        metadata="{}",
    )
    return AnnounceFile(id=f"job-{file_id}", event=event, created_at=created_at)


class TopOfJitter(random.Random):
    """Always the longest wait the jitter allows: the backoff schedule shows exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


class BottomOfJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


Answer = bool | Exception


class Worker:
    """A scripted handler: records each job, answers as told (True = done; an exception
    is raised), True once the script is used up."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.jobs: list[Job] = []
        self.meanwhile: Callable[[], Awaitable[object]] | None = None  # runs during a job

    async def __call__(self, job: Job) -> bool:
        self.jobs.append(job)
        if self.meanwhile is not None:
            await self.meanwhile()
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def ids(self) -> list[str]:
        return [job.id for job in self.jobs]


class DiskFullJournal(Journal):
    async def append(self, entry: Job) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


class World:
    """One gateway's outbox over a fake Redis (or none) and a journal in a directory."""

    def __init__(
        self,
        directory: Path,
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
        self.metrics = Metrics()
        self.outbox = Outbox(
            self.redis, self.journal, self.metrics, rng=rng or TopOfJitter(), clock=self.clock
        )

    def handle(self, job_type: type[Job], *answers: Answer) -> Worker:
        worker = Worker(*answers)
        self.outbox.handle(job_type, worker)
        return worker

    def redis_down(self) -> None:
        self.server.connected = False

    def redis_up(self) -> None:
        self.server.connected = True

    @property
    def client(self) -> fakeredis.FakeAsyncRedis:
        assert self.redis is not None
        return self.redis

    async def scheduled(self, kind: str = DELETE) -> list[tuple[str, float]]:
        """Jobs of `kind` in Redis: (job id, next attempt time), soonest first."""
        raw = await self.client.zrange(due_key(kind), 0, -1, withscores=True)
        return [(msgspec.json.decode(item)["id"], score) for item, score in raw]

    async def since(self, kind: str = DELETE) -> list[tuple[str, float]]:
        raw = await self.client.zrange(since_key(kind), 0, -1, withscores=True)
        return [(item.decode(), score) for item, score in raw]

    async def attempts(self, kind: str = DELETE) -> dict[str, int]:
        raw = await self.client.hgetall(attempts_key(kind))
        return {k.decode(): int(v) for k, v in raw.items()}

    def journaled(self) -> list[str]:
        return [job.id for job in self.journal.pending()]

    def gauges(self, kind: str) -> tuple[float | None, float | None]:
        labels = {"kind": kind}
        get = self.metrics.registry.get_sample_value
        return get("ingester_outbox_jobs", labels), get("ingester_outbox_oldest_seconds", labels)

    def close(self) -> None:
        self.journal.close()


def in_world(tmp_path: Path, scenario: Callable[[World], Awaitable[T]], **kwargs: Any) -> T:
    async def go() -> T:
        world = World(tmp_path, **kwargs)
        try:
            return await scenario(world)
        finally:
            await world.outbox.stop()
            world.close()

    return run(go())


async def eventually(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait, in real time, for the background loop to make `condition()` true."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# -- add: durable before it returns ------------------------------------------------------


@pytest.mark.parametrize("job", [delete_file(), register_file(), announce_file()])
def test_add_puts_the_job_in_its_kinds_redis_set_due_now(tmp_path: Path, job: Job) -> None:
    async def scenario(world: World) -> dict[str, object]:
        world.clock.now = 1500.0
        await world.outbox.add(job)
        found: dict[str, object] = {"journal": world.journaled()}
        for kind in KINDS:
            raw = await world.client.zrange(due_key(kind), 0, -1, withscores=True)
            found[kind] = [(msgspec.json.decode(item, type=Job), score) for item, score in raw]
            found[kind + ":since"] = await world.since(kind)
        return found

    kind = kind_of(job)
    found = in_world(tmp_path, scenario)
    assert found.pop("journal") == []
    assert found.pop(kind) == [(job, 1500.0)]
    assert found.pop(f"{kind}:since") == [(job.id, 1000.0)]  # when it was created
    assert all(v == [] for v in found.values()), found  # nothing under the other kinds


def test_owe_delete_records_a_delete_of_that_file_on_that_node(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[Job]:
        world.clock.now = 1234.0
        await world.outbox.owe_delete(NODE, "f-1", "checksum_mismatch")
        raw = await world.client.zrange(due_key(DELETE), 0, -1)
        return [msgspec.json.decode(item, type=Job) for item in raw]

    (job,) = in_world(tmp_path, scenario)
    assert isinstance(job, DeleteFile)
    assert (job.node_id, job.node_url, job.file_id, job.reason) == (
        "se-1",
        "http://se-1:8010",
        "f-1",
        "checksum_mismatch",
    )
    assert (job.created_at, job.not_before) == (1234.0, 0.0)


def test_add_falls_back_to_the_journal_on_disk_when_redis_is_down(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        world.redis_down()
        await world.outbox.add(register_file("f-9"))
        (path,) = tmp_path.glob("journal-*.jsonl")  # what a crash right now would leave
        on_disk = path.read_bytes()
        world.redis_up()
        return [world.journaled(), b'"file_id":"f-9"' in on_disk, await world.scheduled(REGISTER)]

    assert in_world(tmp_path, scenario) == [["job-f-9"], True, []]


def test_add_without_redis_writes_the_journal(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[Job]:
        await world.outbox.add(delete_file())
        return world.journal.pending()

    assert in_world(tmp_path, scenario, with_redis=False) == [delete_file()]


def closed(directory: Path) -> Journal:
    journal = Journal(directory)
    journal.open()
    journal.close()
    journal.open = lambda: None  # type: ignore[method-assign]  # the World opens it: stay closed
    return journal


def never_opened(directory: Path) -> Journal:
    """What a journal whose directory could not be written is: open() failed."""
    journal = Journal(directory)
    journal.open = lambda: None  # type: ignore[method-assign]
    return journal


@pytest.mark.parametrize("broken", [closed, never_opened, DiskFullJournal])
def test_add_raises_outbox_unavailable_when_redis_and_the_journal_both_fail(
    tmp_path: Path, broken: Callable[[Path], Journal]
) -> None:
    async def scenario(world: World) -> None:
        world.redis_down()
        with pytest.raises(OutboxUnavailable, match="Redis unreachable and the journal failed"):
            await world.outbox.add(announce_file())

    in_world(tmp_path, scenario, journal=broken(tmp_path / "journal"))


def test_add_without_redis_raises_outbox_unavailable_when_the_journal_fails(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> None:
        with pytest.raises(OutboxUnavailable):
            await world.outbox.add(delete_file())

    in_world(tmp_path, scenario, with_redis=False, journal=DiskFullJournal(tmp_path))


def test_a_failing_journal_does_not_matter_while_redis_answers(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[tuple[str, float]]:
        await world.outbox.add(delete_file())
        return await world.scheduled()

    assert in_world(tmp_path, scenario, journal=DiskFullJournal(tmp_path)) == [("job-f-1", 1000.0)]


def test_a_delete_that_can_be_recorded_nowhere_is_logged_critical_not_raised(
    tmp_path: Path,
) -> None:
    """The upload's own error is what the client must see; the operator gets what to
    delete by hand."""

    async def scenario(world: World) -> list[Any]:
        world.redis_down()
        with structlog.testing.capture_logs() as logs:
            await world.outbox.owe_delete(NODE, "f-1", "aborted")
        return [e for e in logs if e["event"] == "compensation_lost"]

    (lost,) = in_world(tmp_path, scenario, journal=DiskFullJournal(tmp_path))
    assert (lost["log_level"], lost["node"], lost["node_url"], lost["file_id"]) == (
        "critical",
        "se-1",
        "http://se-1:8010",
        "f-1",
    )
    assert lost["reason"] == "aborted"


# -- working the jobs in Redis ---------------------------------------------------------------


def test_each_due_job_is_run_by_its_kinds_handler_and_removed_when_done(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        workers = [world.handle(t) for t in (DeleteFile, RegisterFile, AnnounceFile)]
        for job in (delete_file(), register_file(), announce_file()):
            await world.outbox.add(job)
        await world.outbox.work_once()
        left = [
            [await world.scheduled(k), await world.since(k), await world.attempts(k)] for k in KINDS
        ]
        return [[w.ids for w in workers], left]

    assert in_world(tmp_path, scenario) == [
        [["job-f-1"], ["job-f-2"], ["job-f-3"]],
        [[[], [], {}]] * len(KINDS),
    ]


def test_the_handler_gets_the_job_as_it_was_added(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[Job]:
        worker = world.handle(RegisterFile)
        await world.outbox.add(register_file("f-7"))
        await world.outbox.work_once()
        return worker.jobs

    assert in_world(tmp_path, scenario) == [register_file("f-7")]


def test_a_job_not_yet_due_is_left_alone(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[str]:
        worker = world.handle(DeleteFile)
        world.clock.advance(60)
        await world.outbox.add(delete_file())
        world.clock.now -= 1  # another gateway's clock, a second behind
        await world.outbox.work_once()
        return worker.ids

    assert in_world(tmp_path, scenario) == []


def test_a_failed_job_is_rescheduled_with_growing_backoff_and_its_attempts_counted(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> list[object]:
        world.handle(DeleteFile, False, False, False)
        await world.outbox.add(delete_file())
        seen: list[object] = []
        for _ in range(3):
            await world.outbox.work_once()
            ((_, due),) = await world.scheduled()
            seen.append((due, await world.attempts()))
            world.clock.now = due
        seen.append(await world.since())  # still owed, since it was added
        return seen

    # TopOfJitter: the longest waits the jitter allows, doubling from 2 s
    assert in_world(tmp_path, scenario) == [
        (1002.0, {"job-f-1": 1}),
        (1006.0, {"job-f-1": 2}),
        (1014.0, {"job-f-1": 3}),
        [("job-f-1", 1000.0)],
    ]


def test_a_handler_that_raises_counts_as_a_failure_and_is_logged(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        world.handle(AnnounceFile, RuntimeError("boom"))
        await world.outbox.add(announce_file())
        with structlog.testing.capture_logs() as logs:
            await world.outbox.work_once()
        failed = [e for e in logs if e["event"] == "outbox_job_failed"]
        return [
            await world.scheduled(ANNOUNCE),
            await world.attempts(ANNOUNCE),
            [(e["kind"], e["job_id"]) for e in failed],
        ]

    assert in_world(tmp_path, scenario) == [
        [("job-f-3", 1002.0)],
        {"job-f-3": 1},
        [("announcement", "job-f-3")],
    ]


def test_attempts_are_counted_per_job(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        # round 1: f-1 fails, f-2 fails; round 2: f-1 fails again, f-2 is done
        world.handle(DeleteFile, False, False, False, True)
        await world.outbox.add(delete_file("f-1"))
        await world.outbox.add(delete_file("f-2", created_at=1001.0))
        await world.outbox.work_once()
        world.clock.advance(10)
        await world.outbox.work_once()
        return [await world.attempts(), [job_id for job_id, _ in await world.scheduled()]]

    assert in_world(tmp_path, scenario) == [{"job-f-1": 2}, ["job-f-1"]]


def test_a_failed_job_waits_at_least_half_a_second(tmp_path: Path) -> None:
    """However the jitter falls, a failing job does not spin in a tight loop."""

    async def scenario(world: World) -> list[tuple[str, float]]:
        world.handle(DeleteFile, False)
        await world.outbox.add(delete_file())
        await world.outbox.work_once()
        return await world.scheduled()

    assert in_world(tmp_path, scenario, rng=BottomOfJitter()) == [("job-f-1", 1000.5)]


def test_the_backoff_is_capped_at_five_minutes(tmp_path: Path) -> None:
    async def scenario(world: World) -> float:
        world.handle(DeleteFile, *[False] * 12)
        await world.outbox.add(delete_file())
        for _ in range(12):
            now = world.clock()
            await world.outbox.work_once()
            ((_, due),) = await world.scheduled()
            world.clock.now = due
        return due - now

    assert in_world(tmp_path, scenario) == 300.0


def test_a_success_after_failures_clears_the_attempt_count(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        worker = world.handle(DeleteFile, False, True)
        await world.outbox.add(delete_file())
        await world.outbox.work_once()
        world.clock.advance(10)
        await world.outbox.work_once()
        return [worker.ids, await world.scheduled(), await world.since(), await world.attempts()]

    assert in_world(tmp_path, scenario) == [["job-f-1", "job-f-1"], [], [], {}]


def test_a_job_leased_by_another_owner_is_skipped(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        worker = world.handle(DeleteFile)
        await world.outbox.add(delete_file())
        lease = LEASE.format("job-f-1")
        await world.client.set(lease, "other-gateway", px=30_000)
        await world.outbox.work_once()
        seen: list[object] = [
            list(worker.ids),
            await world.scheduled(),
            await world.attempts(),  # not a failure of ours: no backoff
            await world.client.get(lease),
        ]
        await world.client.delete(lease)  # the other one let it go
        await world.outbox.work_once()
        return [*seen, worker.ids, await world.scheduled()]

    assert in_world(tmp_path, scenario) == [
        [],
        [("job-f-1", 1000.0)],
        {},
        b"other-gateway",
        ["job-f-1"],
        [],
    ]


def test_a_lease_already_ours_is_taken_at_once(tmp_path: Path) -> None:
    """Our lease SET ran but its answer was lost (the round failed): the lease holds our
    own name, and the next round works the job instead of waiting the lease out."""

    async def scenario(world: World) -> list[object]:
        worker = world.handle(DeleteFile)
        await world.outbox.add(delete_file())
        await world.client.set(LEASE.format("job-f-1"), world.outbox._owner, px=30_000)
        await world.outbox.work_once()
        return [worker.ids, await world.scheduled(), await world.client.keys(LEASE.format("*"))]

    assert in_world(tmp_path, scenario) == [["job-f-1"], [], []]


def test_the_lease_is_released_after_the_attempt(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        held: list[object] = []
        worker = world.handle(DeleteFile, False)

        async def look() -> None:
            held.append(await world.client.exists(LEASE.format("job-f-1")))

        worker.meanwhile = look
        await world.outbox.add(delete_file())
        await world.outbox.work_once()
        return [held, await world.client.keys(LEASE.format("*"))]

    assert in_world(tmp_path, scenario) == [[1], []]  # held while it ran, gone after


def test_a_lease_taken_over_meanwhile_is_not_released_by_the_old_holder(tmp_path: Path) -> None:
    """Our lease lapsed during a slow job and another gateway took it: we must not
    delete its lease."""

    async def scenario(world: World) -> object:
        worker = world.handle(DeleteFile, False)
        lease = LEASE.format("job-f-1")
        client = world.client
        worker.meanwhile = lambda: client.set(lease, "other-gateway", px=30_000)
        await world.outbox.add(delete_file())
        await world.outbox.work_once()
        return await world.client.get(lease)

    assert in_world(tmp_path, scenario) == b"other-gateway"


def test_a_job_done_by_another_gateway_between_our_read_and_our_lease_is_not_run_again(
    tmp_path: Path,
) -> None:
    """We read a batch, then another gateway works one of its jobs while we are busy
    with the first: when we get to that one it is gone, and we skip it."""

    async def scenario(world: World) -> list[list[str]]:
        other = World(tmp_path / "other", server=world.server, clock=world.clock)
        try:
            ours, theirs = world.handle(DeleteFile), other.handle(DeleteFile)
            await world.outbox.add(delete_file("f-1"))
            await world.outbox.add(delete_file("f-2", created_at=1000.5))

            async def other_gateway_round() -> None:
                ours.meanwhile = None
                await other.outbox.work_once()  # f-1 is leased by us: it does f-2

            ours.meanwhile = other_gateway_round
            await world.outbox.work_once()
            assert await world.scheduled() == []
            return [ours.ids, theirs.ids]
        finally:
            other.close()

    assert in_world(tmp_path, scenario) == [["job-f-1"], ["job-f-2"]]


def test_two_gateways_working_at_once_never_run_a_job_twice(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[str]:
        other = World(tmp_path / "other", server=world.server, clock=world.clock)
        try:
            ours, theirs = world.handle(DeleteFile), other.handle(DeleteFile)
            for i in range(6):
                await world.outbox.add(delete_file(f"f-{i}"))
            await asyncio.gather(world.outbox.work_once(), other.outbox.work_once())
            assert await world.scheduled() == []
            return sorted(ours.ids + theirs.ids)
        finally:
            other.close()

    assert in_world(tmp_path, scenario) == [f"job-f-{i}" for i in range(6)]


def test_a_round_works_at_most_one_batch_of_each_kind(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[int]:
        deletes, announces = world.handle(DeleteFile), world.handle(AnnounceFile)
        for i in range(BATCH + 5):
            await world.outbox.add(delete_file(f"d-{i}"))
            await world.outbox.add(announce_file(f"a-{i}"))
        await world.outbox.work_once()
        first = [len(deletes.jobs), len(announces.jobs)]
        await world.outbox.work_once()
        return [*first, len(deletes.jobs), len(announces.jobs)]

    assert in_world(tmp_path, scenario) == [BATCH, BATCH, BATCH + 5, BATCH + 5]


def test_a_job_of_a_kind_without_a_handler_stays_in_redis(tmp_path: Path) -> None:
    """A process that cannot work a kind leaves its jobs for one that can."""

    async def scenario(world: World) -> list[object]:
        deletes = world.handle(DeleteFile)
        await world.outbox.add(register_file())
        await world.outbox.add(delete_file())
        await world.outbox.work_once()
        seen: list[object] = [
            deletes.ids,
            [job_id for job_id, _ in await world.scheduled(REGISTER)],
            await world.since(REGISTER),
        ]
        registrations = world.handle(RegisterFile)  # a process that can
        world.clock.advance(10)
        await world.outbox.work_once()
        return [*seen, registrations.ids, await world.scheduled(REGISTER)]

    assert in_world(tmp_path, scenario) == [
        ["job-f-1"],
        ["job-f-2"],
        [("job-f-2", 1000.0)],
        ["job-f-2"],
        [],
    ]


def test_undecodable_members_are_dropped_and_the_rest_worked(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        worker = world.handle(DeleteFile)
        garbage = {b"not json": 0, b'{"type":"no-such-kind","id":"x"}': 0, b'{"id":"y"}': 0}
        await world.client.zadd(due_key(DELETE), garbage)
        await world.outbox.add(delete_file())
        await world.outbox.work_once()
        return [worker.ids, await world.client.zcard(due_key(DELETE))]

    assert in_world(tmp_path, scenario) == [["job-f-1"], 0]


# -- not_before: a delete owed later ---------------------------------------------------------


def test_a_delete_owed_later_waits_in_redis_until_not_before(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        worker = world.handle(DeleteFile)
        await world.outbox.owe_delete(NODE, "f-1", "finalized", not_before=1000.0 + 86_400)
        ((_, due),) = await world.scheduled()
        world.clock.now = 1000.0 + 86_399
        await world.outbox.work_once()
        early = list(worker.jobs)
        world.clock.now = 1000.0 + 86_400
        await world.outbox.work_once()
        return [due, early, [job.file_id for job in worker.jobs]]

    assert in_world(tmp_path, scenario) == [87_400.0, [], ["f-1"]]


def test_a_delete_owed_later_waits_in_the_journal_until_not_before(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        worker = world.handle(DeleteFile)
        await world.outbox.add(delete_file(not_before=1060.0))
        tried = []
        for _ in range(3):  # at 1000, 1030, 1060
            await world.outbox.work_once()
            tried.append(len(worker.jobs))
            world.clock.advance(30)
        return [tried, world.journaled()]

    assert in_world(tmp_path, scenario, with_redis=False) == [[0, 0, 1], []]


def test_a_journaled_delete_owed_later_keeps_its_time_when_it_moves_to_redis(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> list[object]:
        worker = world.handle(DeleteFile)
        world.redis_down()
        await world.outbox.add(delete_file(not_before=5000.0))
        world.redis_up()
        await world.outbox.work_once()
        return [world.journaled(), await world.scheduled(), worker.ids]

    assert in_world(tmp_path, scenario) == [[], [("job-f-1", 5000.0)], []]


# -- the journal: moved to Redis, or worked here ---------------------------------------------


def test_journal_jobs_move_to_redis_once_it_answers(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        worker = world.handle(RegisterFile, False)
        world.redis_down()
        await world.outbox.add(register_file())
        world.redis_up()
        world.clock.advance(5)
        await world.outbox.work_once()
        return [
            world.journaled(),
            await world.scheduled(REGISTER),
            await world.since(REGISTER),
            worker.ids,
        ]

    # moved (due from now), worked in the same round, failed: due again 2 s later
    assert in_world(tmp_path, scenario) == [
        [],
        [("job-f-2", 1007.0)],
        [("job-f-2", 1000.0)],
        ["job-f-2"],
    ]


def test_a_dead_processs_journal_is_moved_to_redis_by_the_next_process(tmp_path: Path) -> None:
    async def scenario() -> list[object]:
        server = fakeredis.FakeServer()
        first = World(tmp_path, server=server)
        first.redis_down()
        await first.outbox.add(announce_file())
        first.close()  # the process ends with Redis still away
        first.redis_up()
        second = World(tmp_path, server=server)
        try:
            worker = second.handle(AnnounceFile)
            await second.outbox.work_once()
            return [second.journaled(), worker.ids, await second.scheduled(ANNOUNCE)]
        finally:
            second.close()

    assert run(scenario()) == [[], ["job-f-3"], []]


def test_without_redis_journal_jobs_are_worked_here(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        deletes, registers = world.handle(DeleteFile), world.handle(RegisterFile)
        await world.outbox.add(delete_file())
        await world.outbox.add(register_file())
        await world.outbox.work_once()
        return [deletes.ids, registers.ids, world.journaled()]

    assert in_world(tmp_path, scenario, with_redis=False) == [["job-f-1"], ["job-f-2"], []]


def test_without_redis_a_failed_job_is_retried_with_growing_backoff(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[float]:
        worker = world.handle(DeleteFile, False, False, RuntimeError("boom"), False, False)
        await world.outbox.add(delete_file())
        tried_at = []
        for _ in range(40):  # 40 rounds a second apart
            before = len(worker.jobs)
            await world.outbox.work_once()
            if len(worker.jobs) > before:
                tried_at.append(world.clock() - 1000.0)
            world.clock.advance(1.0)
        return tried_at

    # TopOfJitter: waits of 2, 4, 8, 16 s after the failures at 0, 2, 6, 14 s
    assert in_world(tmp_path, scenario, with_redis=False) == [0.0, 2.0, 6.0, 14.0, 30.0]


def test_without_redis_a_job_stays_journaled_until_it_is_done(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[list[str]]:
        world.handle(DeleteFile, False, True)
        await world.outbox.add(delete_file())
        await world.outbox.work_once()
        kept = world.journaled()
        world.clock.advance(2.0)
        await world.outbox.work_once()
        return [kept, world.journaled()]

    assert in_world(tmp_path, scenario, with_redis=False) == [["job-f-1"], []]


def test_without_redis_a_job_of_a_kind_without_a_handler_stays_journaled(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[str]:
        await world.outbox.add(announce_file())
        for _ in range(3):
            await world.outbox.work_once()
            world.clock.advance(60)
        return world.journaled()

    assert in_world(tmp_path, scenario, with_redis=False) == ["job-f-3"]


def test_while_redis_is_down_journal_jobs_are_worked_here(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        worker = world.handle(DeleteFile)
        world.redis_down()
        await world.outbox.add(delete_file())
        with pytest.raises(redis.exceptions.ConnectionError):
            await world.outbox.work_once()  # the Redis half of the round cannot run
        return [worker.ids, world.journaled()]

    assert in_world(tmp_path, scenario) == [["job-f-1"], []]


# -- start: the legacy backlog ---------------------------------------------------------------


def test_start_adopts_the_legacy_compensation_backlog(tmp_path: Path) -> None:
    """Deletes owed under `ingester:compensations`, in the backlog's old format, are
    worked by the outbox; what cannot be read there is dropped."""

    old_item = msgspec.json.encode(
        {
            "type": "compensation",
            "id": "legacy-1",
            "node_id": "se-1",
            "node_url": "http://se-1:8010",
            "file_id": "f-old",
            "reason": "aborted",
            "created_at": 900.0,
        }
    )

    async def scenario(world: World) -> list[object]:
        worker = world.handle(DeleteFile, False)
        await world.client.zadd(LEGACY_BACKLOG, {old_item: 950.0, b"not json": 950.0})
        await world.outbox.start(interval=3600)
        await eventually(lambda: worker.jobs)
        await world.outbox.stop()
        return [
            await world.client.exists(LEGACY_BACKLOG),
            [(job.id, job.file_id) for job in worker.jobs],
            await world.scheduled(),
            await world.since(),
        ]

    assert in_world(tmp_path, scenario) == [
        0,
        [("legacy-1", "f-old")],
        [("legacy-1", 1002.0)],  # failed once: backoff as any job
        [("legacy-1", 900.0)],
    ]


# -- the loop, its gauges, stopping ----------------------------------------------------------


def test_the_loop_works_jobs_and_keeps_going_while_redis_is_away(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[str]:
        worker = world.handle(DeleteFile)
        await world.outbox.add(delete_file("f-1"))
        await world.outbox.start(interval=0.01)
        await eventually(lambda: worker.ids == ["job-f-1"])
        world.redis_down()
        await world.outbox.add(delete_file("f-2"))
        await eventually(lambda: worker.ids == ["job-f-1", "job-f-2"])
        return world.journaled()

    assert in_world(tmp_path, scenario) == []


def test_the_gauges_count_journal_and_redis_jobs_by_kind_with_the_oldest_age(
    tmp_path: Path,
) -> None:
    """No handlers here: every job stays, and the gauges show what is owed."""

    async def scenario(world: World) -> list[object]:
        def gauges() -> list[tuple[float | None, float | None]]:
            return [world.gauges(kind) for kind in KINDS]

        await world.outbox.add(delete_file("r-1", created_at=1000.0))
        await world.outbox.add(delete_file("r-2", created_at=1004.0))
        await world.outbox.add(register_file("r-3", created_at=1010.0))
        world.clock.now = 1020.0
        await world.outbox.start(interval=0.01)
        await eventually(lambda: gauges() == [(2, 20), (1, 10), (0, 0), (0, 0), (0, 0)])
        world.redis_down()  # Redis's last count stands; the journal's share is current
        await world.outbox.add(delete_file("j-1", created_at=990.0))
        await world.outbox.add(announce_file("j-2", created_at=1015.0))
        await eventually(lambda: gauges() == [(3, 30), (1, 10), (1, 5), (0, 0), (0, 0)])
        world.clock.advance(100)  # ages grow with the clock
        await eventually(lambda: gauges() == [(3, 130), (1, 110), (1, 105), (0, 0), (0, 0)])
        world.redis_up()  # the journal moves to Redis: the same jobs, counted once
        await eventually(lambda: world.journaled() == [])
        await eventually(lambda: gauges() == [(3, 130), (1, 110), (1, 105), (0, 0), (0, 0)])
        return [len(await world.scheduled(kind)) for kind in KINDS]

    assert in_world(tmp_path, scenario) == [3, 1, 1, 0, 0]


def test_without_redis_the_gauges_count_the_journal(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        await world.outbox.add(register_file(created_at=950.0))
        await world.outbox.start(interval=0.01)
        await eventually(lambda: world.gauges(REGISTER) == (1, 50))
        return [world.gauges(DELETE), world.gauges(ANNOUNCE)]

    assert in_world(tmp_path, scenario, with_redis=False) == [(0, 0), (0, 0)]


def test_stop_ends_the_loop_promptly(tmp_path: Path) -> None:
    async def scenario(world: World) -> float:
        await world.outbox.start(interval=3600)
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await world.outbox.stop()
        return loop.time() - started

    assert in_world(tmp_path, scenario) < 0.5


def test_stop_before_start_is_harmless(tmp_path: Path) -> None:
    async def scenario(world: World) -> None:
        await world.outbox.stop()

    in_world(tmp_path, scenario)
