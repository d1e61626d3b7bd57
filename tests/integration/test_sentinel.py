"""Redis high availability through Sentinel, with real processes: one master, one
replica and three Sentinels (Debian's redis-sentinel) on loopback; a gateway and two
self-registering SEs given the `redis+sentinel://` URL. The master is killed (SIGKILL)
while uploads stream in: uploads keep succeeding after at most a window of 503s, every
upload answered 201 has its `file:created` event exactly once (those stored while no
master answered wait in the outbox's journal and are delivered once the replica is
promoted), and the SEs' heartbeats find the new master. And a write that a demoted
master refuses (READONLY) is sent again to the new one, a bounded number of times."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from ingester_gateway.reference.processes import (
    ServerProcess,
    admin_module,
    redis_server,
    running,
)
from ingester_gateway.runtime.redis_io import RESEND_ATTEMPTS, CommandNotRun, redis_client
from tests.kit import DevKeys, eventually, metric, put, run
from tests.stack import DemotedMasterLink, SentinelSet, redis_gateway, registered_se

UPLOADERS = 2
BEFORE_KILL = 8  # uploads answered 201 before the master dies
AFTER_FAILOVER = 10  # consecutive 201s, begun after the promotion, that end the stream
STREAM_DEADLINE = 60.0  # seconds the whole stream may take (a slow 2-core machine)


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    with SentinelSet.running(tmp_path_factory.mktemp("sentinel")) as watched:
        yield watched


@dataclass
class Outcome:
    status: int
    file_id: str | None
    began: float  # monotonic


@dataclass
class UploadStream:
    """UPLOADERS threads sending small distinct files to `gw` until told to stop."""

    gw: ServerProcess
    keys: DevKeys
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def _upload(self) -> None:
        while not self.stop.is_set():
            number = next(self._numbers)
            data = os.urandom(4096 + number * 97 % 8192)
            began = time.monotonic()
            answer = put(self.gw, self.keys.auth(), data, f"ha-{number}.bin", timeout=30)
            file_id = answer.json()["file_id"] if answer.status == 201 else None
            with self._lock:
                self.outcomes.append(Outcome(answer.status, file_id, began))

    def run_until(self, enough: threading.Event) -> threading.Thread:
        threads = [threading.Thread(target=self._upload, daemon=True) for _ in range(UPLOADERS)]
        for thread in threads:
            thread.start()

        def join() -> None:
            enough.wait(STREAM_DEADLINE)
            self.stop.set()
            for thread in threads:
                thread.join(60)

        joiner = threading.Thread(target=join, daemon=True)
        joiner.start()
        return joiner

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)


def created_events(port: int) -> dict[str, int]:
    """file:created entries on `file-events` of the master at `port`, counted by file id."""
    with redis.Redis(port=port, socket_timeout=5, decode_responses=True) as db:
        entries = db.xrange("file-events")
    counts: dict[str, int] = {}
    for _, fields in entries:
        if fields["event_type"] == "file:created":
            counts[fields["file_id"]] = counts.get(fields["file_id"], 0) + 1
    return counts


def stored_ids(*data_dirs: Path) -> set[str]:
    return {
        p.name.removesuffix(".attr.json")
        for data in data_dirs
        for p in (data / "files").glob("*.attr.json")
    }


def test_uploads_and_their_events_ride_out_the_master_dying(
    sentinels: SentinelSet, keys: DevKeys, tmp_path: Path
) -> None:
    url = sentinels.url
    tokens = admin_module(tmp_path, keys.private_path)  # the service account only
    se_a = registered_se(tmp_path, keys, url, "se-a")
    se_b = registered_se(tmp_path, keys, url, "se-b")
    with running(tokens, se_a, se_b):
        gw = redis_gateway(tmp_path, keys, url, tokens)
        with running(gw):
            eventually(lambda: metric(gw, "ingester_node_healthy", node="se-b") == 1, 20)
            stream = UploadStream(gw, keys)
            enough = threading.Event()
            joiner = stream.run_until(enough)

            def successes() -> int:
                return sum(o.status == 201 for o in stream.snapshot())

            eventually(lambda: successes() >= BEFORE_KILL, 30, "uploads before the kill")
            old_port = sentinels.master_port()
            sentinels.master.kill()
            new_port = sentinels.wait_failover(old_port)
            promoted_at = time.monotonic()

            def recovered() -> bool:
                later = [o for o in stream.snapshot() if o.began > promoted_at]
                tail = list(itertools.takewhile(lambda o: o.status == 201, reversed(later)))
                return len(tail) >= AFTER_FAILOVER

            try:
                eventually(recovered, STREAM_DEADLINE, "consecutive 201s after the failover")
            finally:
                enough.set()
                joiner.join(90)
            outcomes = stream.snapshot()

            # Only 201 or 503 (Retry-After: try again), never a 500 or a 502.
            assert {o.status for o in outcomes} <= {201, 503}, [o.status for o in outcomes]
            answered = {o.file_id for o in outcomes if o.file_id is not None}
            assert len(answered) == sum(o.status == 201 for o in outcomes)

            # The outbox delivers what waited in the journal; then each file has one event.
            def delivered() -> dict[str, int] | None:
                counts = created_events(new_port)
                pending = metric(gw, "ingester_outbox_jobs", kind="announcement")
                return counts if answered <= counts.keys() and pending == 0 else None

            counts = eventually(delivered, 30, "every 201's event on the new master")
            assert counts == dict.fromkeys(answered, 1)

            # The SEs beat to the new master; the files stored are exactly those answered
            # 201 (a 503 left nothing behind, or its copy was removed).
            with redis.Redis(port=new_port, socket_timeout=5) as db:
                eventually(
                    lambda: db.exists("ingester:node:se-a", "ingester:node:se-b") == 2,
                    20,
                    "both SEs registered on the new master",
                )
            data_dirs = (tmp_path / "se-a-data", tmp_path / "se-b-data")
            eventually(lambda: stored_ids(*data_dirs) == answered, 20, "no orphan on the SEs")


def set_through(url: str) -> object:
    async def write() -> object:
        client = redis_client(url, 2.0)
        try:
            return await client.set("owner", "gateway-1")
        finally:
            await client.aclose()

    return run(write())


def test_a_write_a_demoted_master_refuses_is_sent_again_to_the_new_master(
    tmp_path: Path,
) -> None:
    master = redis_server(tmp_path)
    replica = redis_server(tmp_path, replica_of=master.port)  # what the old master became
    with running(master, replica), DemotedMasterLink(replica.port, master.port) as link:
        assert set_through(link.url) is True
        assert link.connections == 2  # refused on the first, done on a fresh one
        with redis.Redis(port=master.port, socket_timeout=5) as db:
            assert db.get("owner") == b"gateway-1"


def test_a_replica_that_stays_one_is_asked_a_bounded_number_of_times(tmp_path: Path) -> None:
    master = redis_server(tmp_path)
    replica = redis_server(tmp_path, replica_of=master.port)
    with running(master, replica), DemotedMasterLink(replica.port, replica.port) as link:
        with pytest.raises(CommandNotRun):  # a ConnectionError: callers treat it as Redis away
            set_through(link.url)
        assert link.connections == 1 + RESEND_ATTEMPTS
