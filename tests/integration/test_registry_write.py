"""The write side of the Redis node registry, against a real redis-server: reference SEs
that register, heartbeat and deregister themselves, and the operator's `nodes` command.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ingester_gateway.reference.processes import (
    PYTHON,
    ServerProcess,
    redis_server,
    running,
    storage_element,
)
from ingester_gateway.reference.storage_element.heartbeat import NodeHeartbeat
from ingester_gateway.registry.redis import (
    CHANNEL,
    DRAINING,
    NODE_KEY,
    NODES_INDEX,
    NodeAnnouncement,
    RedisNodeBook,
)
from ingester_gateway.runtime.redis_io import redis_client
from tests.kit import DevKeys, eventually
from tests.stack import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TTL,
    nodes,
    redis_url,
    registered_se,
    upload_to_se,
)


class Events:
    """Messages on the registry channel, subscribed before anything is started."""

    def __init__(self, client: redis.Redis) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(CHANNEL)
        confirmation = self.pubsub.get_message(timeout=2)
        assert confirmation is not None and confirmation["type"] == "subscribe"
        self.seen: list[dict[str, str]] = []

    def expect(self, event: str, node_id: str, timeout: float = 3.0) -> None:
        wanted = {"event": event, "id": node_id}
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {wanted} on {CHANNEL}; saw {self.seen}"
            message = self.pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "message":
                self.seen.append(json.loads(message["data"]))

    def drain(self, seconds: float = 0.2) -> list[dict[str, str]]:
        """Everything published until `seconds` pass without a message."""
        while (message := self.pubsub.get_message(timeout=seconds)) is not None:
            if message["type"] == "message":
                self.seen.append(json.loads(message["data"]))
        return self.seen


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(redis_server(tmp_path_factory.mktemp("redis"))) as (server,):
        yield server


@pytest.fixture
def db(redis_proc: ServerProcess) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_proc.port, decode_responses=True, socket_timeout=5)
    client.flushall()
    yield client
    client.close()


def small_se(
    workdir: Path, keys: DevKeys, redis_at: ServerProcess, element_id: str
) -> ServerProcess:
    """A self-registering SE of 1 MiB, priority 7 (heartbeats as `registered_se`)."""
    return registered_se(workdir, keys, redis_at, element_id, capacity="1MiB", priority=7)


def record(db: redis.Redis, node_id: str) -> dict[str, Any] | None:
    raw = db.get(NODE_KEY.format(node_id))
    return None if raw is None else dict(json.loads(raw))


# -- the SE registers itself -------------------------------------------------------------


def test_se_registers_heartbeats_and_reports_its_capacity(
    tmp_path: Path, keys: DevKeys, redis_proc: ServerProcess, db: redis.Redis
) -> None:
    events = Events(db)
    with small_se(tmp_path, keys, redis_proc, "se-hb") as se:
        first = eventually(lambda: record(db, "se-hb"), 1.0, "the SE's record")
        assert first["url"] == se.url
        assert (first["mode"], first["status"], first["priority"]) == ("rw", "ok", 7)
        assert first["capacity_total"] == 2**20
        assert first["capacity_used"] == 0
        assert first["capacity_available"] == 2**20
        assert first["ttl"] == HEARTBEAT_TTL
        assert abs(first["heartbeat_at"] - time.time()) < 2
        assert 0 < db.pttl(NODE_KEY.format("se-hb")) <= HEARTBEAT_TTL * 1000
        assert db.sismember(NODES_INDEX, "se-hb")
        events.expect("registered", "se-hb")

        assert upload_to_se(se, keys, b"x" * 100_000).status == 201
        later = eventually(
            lambda: (r := record(db, "se-hb")) and r["capacity_used"] == 100_000 and r,
            2.0,
            "the upload in the SE's capacity",
        )
        assert later["capacity_available"] == 2**20 - 100_000
        assert later["heartbeat_at"] > first["heartbeat_at"]
        # Heartbeats that change nothing but capacity announce nothing.
        assert events.drain() == [{"event": "registered", "id": "se-hb"}]


def test_sigterm_deregisters_at_once_and_sigkill_expires_within_the_ttl(
    tmp_path: Path, keys: DevKeys, redis_proc: ServerProcess, db: redis.Redis
) -> None:
    events = Events(db)
    clean = small_se(tmp_path, keys, redis_proc, "se-clean").start()
    crashed = small_se(tmp_path, keys, redis_proc, "se-crash").start()
    try:
        eventually(lambda: record(db, "se-clean") and record(db, "se-crash"), 1.0, "both records")
        clean.stop()  # SIGTERM, waits for the exit
        assert record(db, "se-clean") is None
        assert not db.sismember(NODES_INDEX, "se-clean")
        events.expect("deregistered", "se-clean")

        crashed.kill()
        killed_at = time.monotonic()
        assert record(db, "se-crash") is not None  # nobody said goodbye
        # The TTL runs from the last heartbeat, before the kill; the slack is for a
        # loaded machine polling late, not for Redis keeping the key.
        eventually(
            lambda: record(db, "se-crash") is None, HEARTBEAT_TTL + 1.5, "the record's expiry"
        )
        assert time.monotonic() - killed_at <= HEARTBEAT_TTL + 1.5
        assert {"event": "deregistered", "id": "se-crash"} not in events.drain()
    finally:
        clean.stop()
        crashed.stop()


def test_redis_outage_never_stops_uploads_and_the_se_registers_again(
    tmp_path: Path, keys: DevKeys
) -> None:
    first_redis = redis_server(tmp_path / "redis")
    second_redis = redis_server(tmp_path / "redis", port=first_redis.port)  # same address
    se = small_se(tmp_path, keys, first_redis, "se-outage")
    client = redis.Redis(port=first_redis.port, decode_responses=True, socket_timeout=5)
    try:
        with running(first_redis, se):
            eventually(lambda: record(client, "se-outage"), 1.0, "the SE's record")

            first_redis.kill()
            time.sleep(3 * HEARTBEAT_INTERVAL)  # a few heartbeats fail
            started = time.monotonic()
            assert upload_to_se(se, keys, b"during the outage").status == 201
            assert time.monotonic() - started < 1.0

            second_redis.start()  # empty: the SE must register again
            used = len(b"during the outage")

            def registered_again() -> dict[str, Any] | None:
                found = record(client, "se-outage")
                # The first write may come from a heartbeat that read the capacity
                # before the upload counted; the next one carries it.
                return found if found and found["capacity_used"] == used else None

            eventually(registered_again, 8.0, "re-registration with the capacity used")
            assert client.sismember(NODES_INDEX, "se-outage")
        assert record(client, "se-outage") is None, "deregistered from the new Redis"
    finally:
        client.close()
        second_redis.stop()
    log = se.log_path.read_text()
    assert log.count("registry_heartbeat_failed") == 1, "an outage is logged once"


def test_heartbeat_announces_registered_whenever_its_record_went_missing(
    redis_proc: ServerProcess, db: redis.Redis
) -> None:
    events = Events(db)
    state = {"status": "ok"}

    def describe() -> NodeAnnouncement:
        return NodeAnnouncement(
            "se-beat", "http://127.0.0.1:1", "rw", state["status"], heartbeat_at=time.time(), ttl=5
        )

    async def scenario() -> None:
        beat = NodeHeartbeat(RedisNodeBook(redis_client(redis_url(redis_proc), 0.5)), describe, 1)
        await beat.beat()
        await beat.beat()  # nothing changed: nothing to announce
        state["status"] = "degraded"
        await beat.beat()
        db.flushall()  # what a Redis restart between two beats looks like
        await beat.beat()
        await beat.stop()

    asyncio.run(scenario())
    events.expect("deregistered", "se-beat")
    assert [e["event"] for e in events.drain()] == [
        "registered",
        "updated",
        "registered",
        "deregistered",
    ]
    assert record(db, "se-beat") is None


def test_heartbeat_stop_deletes_the_record_whenever_it_comes(
    redis_proc: ServerProcess, db: redis.Redis
) -> None:
    """Stopped at any moment of a beat, the heartbeat ends promptly and leaves no record
    (a late announce after the delete, or a swallowed cancel, would show here)."""

    def describe() -> NodeAnnouncement:
        return NodeAnnouncement("se-stop", "http://127.0.0.1:1", "rw", heartbeat_at=time.time())

    async def run_and_stop(after: float) -> None:
        client = redis_client(redis_url(redis_proc), 0.5)
        beat = NodeHeartbeat(RedisNodeBook(client), describe, 0.001)
        await beat.start()
        await asyncio.sleep(after)
        stopping = asyncio.create_task(beat.stop())
        done, _ = await asyncio.wait({stopping}, timeout=3)  # no cancel: it could be lost
        assert done, f"stop() hangs when it comes after {after * 1000:g} ms"
        stopping.result()

    for step in range(40):
        asyncio.run(run_and_stop(step * 0.0005))
        assert record(db, "se-stop") is None, f"record left, stopped after {step * 0.5:g} ms"


# -- the operator's `nodes` command ------------------------------------------------------


def test_nodes_add_list_drain_remove_round_trip(redis_proc: ServerProcess, db: redis.Redis) -> None:
    url = redis_url(redis_proc)
    events = Events(db)

    flags = ["--url", "http://10.0.0.5:8010", "--mode", "ro", "--capacity-bytes", "2GiB"]
    added = nodes(url, "add", "--id", "manual-1", "--priority", "3", *flags)
    assert added.returncode == 0, added.stderr
    events.expect("registered", "manual-1")
    stored = record(db, "manual-1")
    assert stored is not None
    assert stored["url"] == "http://10.0.0.5:8010"
    assert (stored["mode"], stored["status"], stored["priority"]) == ("ro", "ok", 3)
    assert stored["capacity_total"] == 2 * 2**30
    assert stored["heartbeat_at"] is None and stored["ttl"] is None
    assert db.pttl(NODE_KEY.format("manual-1")) == -1, "an operator's record never expires"

    table = nodes(url, "list")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:5] == ["ID", "URL", "MODE", "STATUS", "PRIORITY"]
    assert row.split()[:5] == ["manual-1", "http://10.0.0.5:8010", "ro", "ok", "3"]
    assert "2.0 GiB / 2.0 GiB" in row and "manual" in row and row.endswith("no")

    drained = nodes(url, "drain", "--id", "manual-1")
    assert drained.returncode == 0, drained.stderr
    events.expect("draining", "manual-1")
    assert db.sismember(DRAINING, "manual-1")
    (listed,) = json.loads(nodes(url, "list", "--json").stdout)
    assert listed["id"] == "manual-1" and listed["draining"] is True
    assert listed["heartbeat_age"] is None and listed["capacity_available"] == 2 * 2**30

    undone = nodes(url, "drain", "--id", "manual-1", "--undo")
    assert undone.returncode == 0, undone.stderr
    events.expect("undrained", "manual-1")
    assert not db.sismember(DRAINING, "manual-1")

    removed = nodes(url, "remove", "--id", "manual-1")
    assert removed.returncode == 0, removed.stderr
    events.expect("deregistered", "manual-1")
    assert record(db, "manual-1") is None
    assert not db.sismember(NODES_INDEX, "manual-1")
    assert nodes(url, "list").stdout.strip() == "no nodes registered"


def test_nodes_refuses_unknown_ids_bad_arguments_and_an_unreachable_redis(
    redis_proc: ServerProcess, db: redis.Redis
) -> None:
    url = redis_url(redis_proc)
    for action in (("remove", "--id", "ghost"), ("drain", "--id", "ghost")):
        gone = nodes(url, *action)
        assert gone.returncode == 1
        assert gone.stderr.strip() == "ingester-gateway nodes: no node 'ghost' in the registry"

    bad_mode = nodes(url, "add", "--id", "n", "--url", "http://h:1", "--mode", "archive")
    assert bad_mode.returncode == 2 and "invalid choice: 'archive'" in bad_mode.stderr
    bad_url = nodes(url, "add", "--id", "n", "--url", "h:1", "--mode", "rw")
    assert bad_url.returncode == 2 and "not an http(s) URL: 'h:1'" in bad_url.stderr
    assert nodes(None, "list").returncode == 2  # no --redis-url, no INGESTER_REDIS_URL
    assert db.keys("*") == []

    down = nodes("redis://127.0.0.1:1", "list")
    assert down.returncode == 1
    assert down.stderr.startswith("ingester-gateway nodes: Redis at redis://127.0.0.1:1 is unr")
    assert len(down.stderr.strip().splitlines()) == 1 and "Traceback" not in down.stderr


def test_nodes_reads_the_redis_url_from_the_environment(
    redis_proc: ServerProcess, db: redis.Redis
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")}
    listed = subprocess.run(
        [PYTHON, "-m", "ingester_gateway", "nodes", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "INGESTER_REDIS_URL": redis_url(redis_proc)},
    )
    assert (listed.returncode, listed.stdout.strip()) == (0, "[]"), listed.stderr


def test_se_with_redis_needs_a_public_url(tmp_path: Path, keys: DevKeys) -> None:
    se = storage_element(tmp_path, keys.public_path, extra=["--redis-url", "redis://127.0.0.1:1"])
    refused = subprocess.run(se.argv, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "--redis-url needs --public-url" in refused.stderr
