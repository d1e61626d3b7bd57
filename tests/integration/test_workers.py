"""INGESTER_WORKERS=2: two processes on one port. Uploads land on both, /metrics
counts both, and an upload's progress can be polled whichever worker answers."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.kit import DevKeys, metric
from tests.stack import Stack, start_stack


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Stack]:
    env = {"INGESTER_WORKERS": "2"}
    yield from start_stack(tmp_path_factory.mktemp("workers"), keys, env=env)


def worker_pids(stack: Stack) -> set[int]:
    children = Path(f"/proc/{stack.gw.pid}/task/{stack.gw.pid}/children").read_text().split()
    return {int(pid) for pid in children}


def test_uploads_spread_over_both_workers_and_metrics_count_them_all(
    two_workers: Stack, keys: DevKeys
) -> None:
    assert len(worker_pids(two_workers)) >= 2  # the supervisor runs two workers
    before = stored_count(two_workers)

    async def upload_many(n: int) -> list[int]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:

            async def one(i: int) -> int:
                async with session.put(
                    f"{two_workers.gw.url}/api/v1/files/w{i}.bin",
                    data=os.urandom(2048),
                    headers=keys.auth(f"w{i % 8}"),  # 32 at once: under 16 per user
                ) as resp:
                    await resp.read()
                    return resp.status

            return await asyncio.gather(*(one(i) for i in range(n)))

    statuses = asyncio.run(upload_many(120))
    assert statuses == [201] * 120
    # Every scrape, whichever worker serves it, sums the counters of both workers.
    for _ in range(6):
        assert stored_count(two_workers) == before + 120


def test_progress_is_readable_from_whichever_worker_answers(
    two_workers: Stack, keys: DevKeys
) -> None:
    upload_id = "workers-progress-0001"
    headers = {**keys.auth(), "X-Upload-Id": upload_id}

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield os.urandom(128 * 1024)
            await asyncio.sleep(0.15)

    async def scenario() -> tuple[list[int], dict[str, object]]:
        polls: list[int] = []
        async with aiohttp.ClientSession() as session:
            upload = asyncio.ensure_future(
                session.put(
                    f"{two_workers.gw.url}/api/v1/files/slow.bin", data=slow_body(), headers=headers
                )
            )
            await asyncio.sleep(1.0)  # past the first mirror interval
            for _ in range(8):
                # A new connection each time: the kernel hands it to either worker.
                async with (
                    aiohttp.ClientSession() as poller,
                    poller.get(
                        f"{two_workers.gw.url}/api/v1/uploads/{upload_id}", headers=keys.auth()
                    ) as resp,
                ):
                    polls.append(resp.status)
            resp = await upload
            assert resp.status == 201
            resp.release()
            async with (
                aiohttp.ClientSession() as poller,
                poller.get(
                    f"{two_workers.gw.url}/api/v1/uploads/{upload_id}", headers=keys.auth()
                ) as final,
            ):
                return polls, json.loads(await final.read())

    polls, final = asyncio.run(scenario())
    assert polls == [200] * 8
    assert final["state"] == "stored"
    assert final["bytes_received"] == 12 * 128 * 1024


def stored_count(stack: Stack) -> float:
    return metric(stack.gw, "ingester_uploads_total", outcome="stored", status="201") or 0.0


def test_process_metrics_are_the_answering_workers(two_workers: Stack) -> None:
    """The dashboard's memory and fds panels have series with several workers too."""
    rss = metric(two_workers.gw, "process_resident_memory_bytes")
    fds = metric(two_workers.gw, "process_open_fds")
    assert rss is not None and 10 * 2**20 < rss < 2**30
    assert fds is not None and fds > 0
