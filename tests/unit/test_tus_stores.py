"""The storage side of resumable uploads without a network: locks that ask their holder
to let go (in one process, and over an in-process Redis between two "gateways"), the
state stores' compare-and-set of offsets and expiry index, staging files."""

from __future__ import annotations

import asyncio
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fakeredis
import msgspec
import pytest

from ingester_gateway.errors import ApiError
from ingester_gateway.resumable.expiry import Sweeper
from ingester_gateway.resumable.files import FileStagingArea, FileStateStore
from ingester_gateway.resumable.locks import LOCK, LocalLocker, RedisLocker
from ingester_gateway.resumable.ports import Locker, LockTimeout, StateStore
from ingester_gateway.resumable.redis_store import RedisStateStore
from ingester_gateway.resumable.state import Owner, UploadState
from tests.kit import FakeClock, collect, run

ID = "0123456789abcdef0123456789abcdef"


def upload(**changes: object) -> UploadState:
    base = UploadState(
        id=ID,
        owner=Owner("alice", "user"),
        dialect="tus",
        created_at=0.0,
        expires_at=100.0,
        length=10,
        filename="f.bin",
    )
    return msgspec.structs.replace(base, **changes)


async def _asking_the_holder_hands_the_lock_over(first: Locker, second: Locker) -> list[str]:
    events: list[str] = []
    holder = await first.acquire(ID, lambda: events.append("asked"), 5)

    async def let_go_when_asked() -> None:
        while "asked" not in events:
            await asyncio.sleep(0.01)
        events.append("saved")
        await holder.release()

    helper = asyncio.create_task(let_go_when_asked())
    taker = await second.acquire(ID, lambda: None, 5)
    events.append("taken")
    await helper
    with pytest.raises(LockTimeout):  # held, and not asked: a sweep does not interrupt
        await first.acquire(ID, lambda: events.append("never"), 0)
    await taker.release()
    await (await first.acquire(ID, lambda: None, 0)).release()  # free again
    return events


def test_a_local_lock_asks_its_holder_and_passes_once_released() -> None:
    async def scenario() -> list[str]:
        locker = LocalLocker()
        return await _asking_the_holder_hands_the_lock_over(locker, locker)

    assert run(scenario()) == ["asked", "saved", "taken"]


def test_a_redis_lock_asks_the_holder_on_another_gateway_over_pubsub() -> None:
    async def scenario() -> list[str]:
        server = fakeredis.FakeServer()
        one = RedisLocker(fakeredis.FakeAsyncRedis(server=server))
        two = RedisLocker(fakeredis.FakeAsyncRedis(server=server))
        await one.start()
        await two.start()
        try:
            await asyncio.sleep(0.3)  # both listen before anyone asks
            return await _asking_the_holder_hands_the_lock_over(one, two)
        finally:
            await one.stop()
            await two.stop()

    assert run(scenario()) == ["asked", "saved", "taken"]


def test_the_lock_of_a_gateway_that_is_gone_is_freed_at_once() -> None:
    async def scenario() -> float:
        server = fakeredis.FakeServer()
        # A gateway that took the lock, then died: Redis dropped its subscription (here:
        # it never made one), so nobody listens on its channel.
        gone = RedisLocker(fakeredis.FakeAsyncRedis(server=server))
        dead = await gone.acquire(ID, lambda: None, 1)
        survivor = RedisLocker(fakeredis.FakeAsyncRedis(server=server))
        await survivor.start()
        try:
            started = asyncio.get_running_loop().time()
            lock = await survivor.acquire(ID, lambda: None, 5)
            took = asyncio.get_running_loop().time() - started
            await lock.release()
            return took
        finally:
            await survivor.stop()
            await dead.release()  # its renewals stop (the key is not its own any more)

    assert run(scenario()) < 0.5  # not the lock's LOCK_MS


def test_a_lock_whose_holder_cannot_be_told_apart_from_a_live_one_is_waited_for() -> None:
    async def scenario() -> None:
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        locker = RedisLocker(client)
        await client.set(LOCK.format(ID), "0123abcd", px=10_000)  # an older gateway's token
        with pytest.raises(LockTimeout):
            await locker.acquire(ID, lambda: None, 0.2)

    run(scenario())


def test_a_holder_that_cannot_let_go_in_time_is_a_timeout() -> None:
    async def scenario() -> None:
        locker = LocalLocker()
        await locker.acquire(ID, lambda: None, 1)
        with pytest.raises(LockTimeout):
            await locker.acquire(ID, lambda: None, 0.05)

    run(scenario())


def test_a_redis_lock_that_ran_out_tells_its_holder() -> None:
    async def scenario() -> bool:
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        locker = RedisLocker(client)
        asked = asyncio.Event()
        lock = await locker.acquire(ID, asked.set, 1)
        await client.delete(LOCK.format(ID))  # as if it expired while the holder stalled
        async with asyncio.timeout(10):
            await asked.wait()
        await lock.release()
        return lock.lost

    assert run(scenario()) is True


async def _offsets_move_only_from_where_they_are(store: StateStore) -> list[object]:
    await store.put(upload())
    moved = await store.advance(upload(offset=4), expected_offset=0)
    stale = await store.advance(upload(offset=8), expected_offset=0)  # a writer left behind
    current = await store.get(ID)
    missing = await store.advance(upload(id="f" * 32, offset=1), expected_offset=0)
    expired = await store.expiring(now=150.0, limit=10)
    await store.put(upload(phase="storing", expires_at=100.0))
    busy = await store.expiring(now=150.0, limit=10)
    await store.postpone(ID, 300.0)
    await store.delete(ID)
    gone = await store.get(ID)
    assert current is not None
    return [moved, stale, current.offset, missing, expired, ID in busy, gone]


def test_the_file_state_store_compares_offsets(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.open()
    # Without Redis the expiry scan reads every state: one being stored is skipped there.
    result = run(_offsets_move_only_from_where_they_are(store))
    assert result == [True, False, 4, False, [ID], False, None]


def test_the_redis_state_store_compares_offsets() -> None:
    store = RedisStateStore(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()))
    # Redis's index names it: the sweep checks the state, then postpones it.
    result = run(_offsets_move_only_from_where_they_are(store))
    assert result == [True, False, 4, False, [ID], True, None]


def test_the_state_store_reads_no_path_of_the_clients_making(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.open()
    assert run(store.get("../../etc/passwd")) is None


def test_staging_writes_hashes_syncs_rolls_back_and_reads_parts_in_order(tmp_path: Path) -> None:
    async def scenario() -> tuple[bytes, bytes, int]:
        with ThreadPoolExecutor(2) as executor:
            staging = FileStagingArea(tmp_path, executor)
            staging.open()
            await staging.create(ID)
            digest = hashlib.sha256()
            writer = await staging.writer(ID, 0, [digest])
            for piece in (b"abc", b"def"):
                await writer.write(piece)
            assert await writer.sync() == 6
            await writer.close()
            second = "f" * 32
            await staging.create(second)
            extra = await staging.writer(second, 0, [])
            await extra.write(b"XYZ-not-kept")
            await extra.rollback()
            await extra.write(b"ghi")
            await extra.sync()
            await extra.close()
            # A dead process left bytes past the durable offset: a new writer drops them.
            (tmp_path / "staging" / second).write_bytes(b"ghi-and-junk")
            await (await staging.writer(second, 3, [])).close()
            source = staging.source([(ID, 6), (second, 3)])
            joined = b"".join(await collect(source.pieces()))
            await source.finish()
            return joined, digest.digest(), (tmp_path / "staging" / second).stat().st_size

    joined, digest, size = run(scenario())
    assert joined == b"abcdefghi" and digest == hashlib.sha256(b"abcdef").digest() and size == 3


def test_staged_bytes_that_are_gone_are_a_410(tmp_path: Path) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            staging = FileStagingArea(tmp_path, executor)
            staging.open()
            await staging.writer(ID, 5, [])

    with pytest.raises(ApiError) as caught:
        run(scenario())
    assert caught.value.status == 410


def test_a_growing_file_is_followed_to_its_end(tmp_path: Path) -> None:
    async def scenario() -> bytes:
        with ThreadPoolExecutor(1) as executor:
            staging = FileStagingArea(tmp_path, executor)
            staging.open()
            path = staging.path(ID)
            path.write_bytes(b"")
            steps = iter([(b"12", False), (b"345", False), (b"", True)])

            async def available(read: int) -> tuple[int, bool]:
                data, last = next(steps)
                with path.open("ab") as fh:
                    fh.write(data)
                return path.stat().st_size, last

            source = staging.source([(ID, 0)], available)
            pieces = await collect(source.pieces())
            await source.finish()
            return b"".join(pieces)

    assert run(scenario()) == b"12345"


def test_the_sweep_removes_idle_expired_uploads_only(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, list[str], list[str]]:
        with ThreadPoolExecutor(1) as executor:
            store, staging = FileStateStore(tmp_path), FileStagingArea(tmp_path, executor)
            store.open()
            staging.open()
            locker = LocalLocker()
            idle, busy, storing, orphan = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
            for upload_id in (idle, busy, storing, orphan):
                await staging.create(upload_id)
            os.utime(staging.path(orphan), (0, 0))  # long untouched, and no state knows it
            await store.put(upload(id=idle))
            await store.put(upload(id=busy))
            await store.put(upload(id=storing, phase="storing"))
            await locker.acquire(busy, lambda: None, 0)  # a request is using it right now
            sweeper = Sweeper(store, staging, locker, {idle: "token"}, 10.0, FakeClock(500.0))
            removed = await sweeper.sweep()
            kept = [i for i in (idle, busy, storing) if await store.get(i) is not None]
            files = sorted(p.name for p in staging.dir.iterdir())
            return removed, kept, files

    removed, kept, files = run(scenario())
    assert removed == 2  # the idle upload, and the orphan staging file
    assert kept == ["b" * 32, "c" * 32] and files == ["b" * 32, "c" * 32]
