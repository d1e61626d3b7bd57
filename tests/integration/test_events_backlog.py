"""`file:created` events (no Admin Module configured: the gateway announces stored files
in artStore's format) and the outbox's owed deletes, against a real redis-server: one
reference SE behind a proxy that can lie about checksums, fail uploads, refuse or slow
down deletes, and two gateways sharing the Redis (its registry, stream and backlog).

A compensation the SE refuses stays owed until it is done: in the Redis backlog, or in
the gateway's local journal while Redis itself is away.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ingester_gateway.admin.wire import FileEvent, FileRecord
from ingester_gateway.reference.processes import ServerProcess, free_port
from tests.faults import StorageElementProxy, se_upload_reply, server_error, wrong_checksum
from tests.kit import (
    AS_SENT,
    DevKeys,
    MiB,
    assert_error_envelope,
    eventually,
    log_events,
    metric,
    multipart_form,
    post_form,
    put,
    sha256_hex,
)
from tests.stack import (
    AnswerLosingLink,
    Cluster,
    node_view,
    nodes,
    redis_gateway,
    redis_url,
    registered_se,
)

STREAM = "file-events"
EVENT_TYPE = "file:created"
LIMIT = 4 * MiB  # INGESTER_MAX_UPLOAD_BYTES of both gateways
TEXT = b"a file event for every stored file, and only for those\n" * 4000


@dataclass
class Shared:
    cluster: Cluster
    proxy: StorageElementProxy  # in front of se-1: the URL se-1 registers
    link: AnswerLosingLink  # between gw-1 and Redis

    @property
    def gws(self) -> list[ServerProcess]:
        return self.cluster.gateways

    def stored(self) -> list[str]:
        return self.cluster.files("se-1").stored_ids()

    def events(self) -> list[dict[str, str]]:
        with self.cluster.client() as db:
            return [fields for _, fields in db.xrange(STREAM)]

    def refuse_deletes(self) -> None:
        self.proxy.refuse = lambda method, path: 503 if method == "DELETE" else None

    def deletes_of(self, file_id: str) -> list[tuple[str, int]]:
        return [(d.path, d.status) for d in self.proxy.deletes() if d.path.endswith(file_id)]

    def lied_upload(self, gw: ServerProcess, keys: DevKeys) -> str:
        """An upload whose 201 the proxy falsifies: 502 to the client; the id the SE
        stored it under (the gateway owes its deletion)."""
        self.proxy.rewrite = se_upload_reply(wrong_checksum)
        try:
            answer = put(gw, keys.auth(), os.urandom(MiB), name="lie.bin", query=AS_SENT)
        finally:
            self.proxy.rewrite = None
        assert_error_envelope(answer, 502, "checksum_mismatch")
        upload = self.proxy.uploads()[-1]
        assert upload.status == 201
        return str(json.loads(upload.reply)["file_id"])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Shared]:
    """se-1 registered at its proxy's URL; gateways gw-1 (through a link that can lose
    Redis's answers) and gw-2 on the same Redis, with breakers out of the way (this SE
    fails on purpose, often)."""
    workdir = tmp_path_factory.mktemp("events")
    se_port = free_port()
    with (
        Cluster.running(workdir, keys) as cluster,
        StorageElementProxy(f"http://127.0.0.1:{se_port}", name="se-1-proxy") as proxy,
        AnswerLosingLink(cluster.redis.port) as link,
    ):
        se = registered_se(workdir, keys, cluster.redis, "se-1", port=se_port, public_url=proxy.url)
        cluster.add_se(se)
        env = {
            "INGESTER_MAX_UPLOAD_BYTES": str(LIMIT),
            "INGESTER_BREAKER_FAILURES": "1000",
            "INGESTER_BREAKER_MIN_CALLS": "1000",
        }
        for name, redis_at in (("gw-1", link.url), ("gw-2", redis_url(cluster.redis))):
            settings = {**env, "INGESTER_REDIS_URL": redis_at}
            cluster.add_gateway(
                redis_gateway(workdir, keys, cluster.redis, cluster.tokens, name=name, env=settings)
            )
        yield Shared(cluster, proxy, link)


@pytest.fixture
def env(shared: Shared) -> Iterator[Shared]:
    """The shared stack with an honest proxy and se-1 in both gateways' views."""
    for gw in shared.gws:
        eventually(lambda gw=gw: "se-1" in node_view(gw), 10, f"se-1 in {gw.name}'s view")
    yield shared
    shared.proxy.rewrite = shared.proxy.refuse = shared.proxy.delay = None
    shared.link.lose_answers_to = None
    redis_process = shared.cluster.redis.process
    assert redis_process is not None
    if redis_process.poll() is None:
        os.kill(redis_process.pid, signal.SIGCONT)  # after a test that froze it
    else:
        shared.cluster.restart_redis()  # after a test that killed it


def assert_event_of(event: dict[str, str], result: dict[str, Any], uploaded_by: str) -> None:
    """`event` is the stream entry of the upload that answered `result`, in the format
    artStore's Admin Module writes and the Query Module reads."""
    assert set(event) == set(FileEvent.__struct_fields__)
    assert event["event_type"] == EVENT_TYPE
    assert (event["file_id"], event["storage_element_id"]) == (
        result["file_id"],
        result["storage_element_id"],
    )
    assert event["timestamp"].endswith("Z")
    metadata = json.loads(event["metadata"])
    assert list(metadata) == list(FileRecord.__struct_fields__)
    temporary = result["retention_policy"] == "temporary"
    assert {k: metadata[k] for k in EXPECTED_FROM_RESULT} == {
        "file_id": result["file_id"],
        "original_filename": result["original_filename"],
        "storage_filename": result["storage_filename"],
        "file_size": result["stored_size"],
        "checksum_sha256": result["stored_checksum"],
        "content_type": result["content_type"],
        "storage_element_id": result["storage_element_id"],
        "storage_path": f"/files/{result['file_id']}",
        "compressed": result["compressed"],
        "compression_algorithm": result["compression_algorithm"] if result["compressed"] else None,
        "original_size": result["file_size"],
        "uploaded_by": uploaded_by,
        "retention_policy": result["retention_policy"],
        "ttl_expires_at": result["ttl_expires_at"] if temporary else None,
        "ttl_days": result["ttl_days"] if temporary else None,
    }
    assert metadata["upload_source_ip"] == "127.0.0.1"
    assert metadata["created_at"] == metadata["updated_at"]
    assert metadata["user_metadata"]["_ingester"]["original_sha256"] == result["checksum"]
    assert metadata["tags"] == []


EXPECTED_FROM_RESULT = (
    "file_id",
    "original_filename",
    "storage_filename",
    "file_size",
    "checksum_sha256",
    "content_type",
    "storage_element_id",
    "storage_path",
    "compressed",
    "compression_algorithm",
    "original_size",
    "uploaded_by",
    "retention_policy",
    "ttl_expires_at",
    "ttl_days",
)


def owed_deletes(gw: ServerProcess) -> float | None:
    return metric(gw, "ingester_outbox_jobs", kind="compensation")


def announcements(gw: ServerProcess) -> float | None:
    return metric(gw, "ingester_outbox_jobs", kind="announcement")


def journal_pending(state_dir: Path) -> list[dict[str, Any]]:
    """Entries of a gateway's local journal not yet marked done."""
    entries: dict[str, dict[str, Any]] = {}
    for path in state_dir.glob("journal-*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["type"] == "done":
                entries.pop(entry["id"], None)
            else:
                entries[entry["id"]] = entry
    return list(entries.values())


def state_dir(cluster: Cluster, gw: ServerProcess) -> Path:
    return cluster.workdir / f"{gw.name}-state"


# -- file events ------------------------------------------------------------------------------


def test_file_events_hold_one_event_per_stored_upload_and_none_for_failed_ones(
    env: Shared, keys: DevKeys
) -> None:
    gw = env.gws[0]
    before = len(env.events())
    stored: list[tuple[dict[str, Any], str]] = []

    def stores(answer: Any, sub: str) -> None:
        assert answer.status == 201, answer.body
        stored.append((answer.json(), sub))

    # Stored: four ways, by three users.
    stores(put(gw, keys.auth("alice"), TEXT, name="notes.txt"), "alice")
    form, form_type = multipart_form(
        {
            "retention_policy": "temporary",
            "ttl_days": "3",
            "compression_algorithm": "gzip",
            "description": "kept three days",
        },
        TEXT,
        filename="report.csv",
    )
    stores(post_form(gw, keys.auth("bob", role="operator"), form, form_type), "bob")
    stores(put(gw, keys.auth("carol"), os.urandom(300_000), name="raw.bin", query=AS_SENT), "carol")
    query = "compression_algorithm=brotli&compress=true"
    stores(put(gw, keys.auth("carol"), TEXT, name="Bericht ä.txt", query=query), "carol")

    # Failed, each in its own way: no event.
    uploads_before = len(env.proxy.uploads())
    assert_error_envelope(put(gw, {}, b"no token"), 401)
    bad_codec = put(gw, keys.auth(), b"x", query="compression_algorithm=lzma")
    assert_error_envelope(bad_codec, 400, "invalid_parameter")
    too_big = (os.urandom(256 * 1024) for _ in range(LIMIT // (256 * 1024) + 4))  # chunked
    assert_error_envelope(put(gw, keys.auth(), too_big, query=AS_SENT), 413, "payload_too_large")
    wrong_digest = {"X-Checksum-SHA256": sha256_hex(b"something else")}
    assert_error_envelope(put(gw, keys.auth(), TEXT, headers=wrong_digest, query=AS_SENT), 422)
    lied = env.lied_upload(gw, keys)
    env.proxy.rewrite = se_upload_reply(server_error)
    assert_error_envelope(
        put(gw, keys.auth(), TEXT, name="e.txt", query=AS_SENT), 503, "no_storage_available"
    )
    env.proxy.rewrite = None
    tries = [u for u in env.proxy.uploads()[uploads_before:] if u.status == 201]
    failed_ids = {json.loads(u.reply)["file_id"] for u in tries}  # each try has its own id
    assert lied in failed_ids and len(failed_ids) == len(tries) >= 2, "no 502/503 reached the SE"

    events = env.events()[before:]
    assert len(events) == len(stored), events
    for result, sub in stored:
        (event,) = [e for e in events if e["file_id"] == result["file_id"]]
        assert_event_of(event, result, sub)
    assert not failed_ids & {e["file_id"] for e in events}
    metadata = [json.loads(e["metadata"]) for e in events]
    assert [m["compression_algorithm"] for m in metadata] == ["zstd", "gzip", None, "brotli"]
    assert [m["ttl_days"] for m in metadata] == [None, 3, None, None]
    assert metadata[1]["description"] == "kept three days"


def test_an_event_recorded_while_redis_is_frozen_is_delivered_once_when_it_answers(
    env: Shared, keys: DevKeys
) -> None:
    """Redis stopped (SIGSTOP): the event cannot be added, so it is journaled and the
    upload still gets its 201. Once Redis runs again, the event is in the stream exactly
    once (the XADD sent before the timeout may land too: the per-file marker holds)."""
    gw = env.gws[0]
    before = len(env.events())
    os.kill(env.cluster.redis.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = put(gw, keys.auth("dave"), TEXT, name="frozen.txt")
        assert answer.status == 201, answer.body
        assert time.monotonic() - started < 3, "the upload waited on a frozen Redis"
        result = answer.json()
        (pending,) = journal_pending(state_dir(env.cluster, gw))
        assert (pending["type"], pending["event"]["file_id"]) == (
            "announcement",
            result["file_id"],
        )
        eventually(lambda: announcements(gw) == 1, 5, "one announcement pending")
    finally:
        os.kill(env.cluster.redis.pid, signal.SIGCONT)

    eventually(lambda: len(env.events()) > before, 5, "the journaled event in the stream")
    eventually(lambda: announcements(gw) == 0, 5, "no announcement pending")
    assert journal_pending(state_dir(env.cluster, gw)) == []
    time.sleep(2)  # more reconciler rounds: nothing is delivered twice
    (event,) = env.events()[before:]
    assert_event_of(event, result, "dave")


def test_an_event_whose_answer_was_lost_is_journaled_and_still_in_the_stream_once(
    env: Shared, keys: DevKeys
) -> None:
    """The event's XADD runs but its answer is lost: the gateway cannot tell, so it
    journals the event and delivers it again later; the per-file marker keeps the
    stream at one entry."""
    gw = env.gws[0]
    before = len(env.events())
    env.link.lose_answers_to = EVENT_TYPE.encode()
    try:
        answer = put(gw, keys.auth("erin"), TEXT, name="lost.txt")
        assert answer.status == 201, answer.body
        result = answer.json()
        (pending,) = journal_pending(state_dir(env.cluster, gw))
        assert (pending["type"], pending["event"]["file_id"]) == (
            "announcement",
            result["file_id"],
        )
        assert [e["file_id"] for e in env.events()[before:]] == [result["file_id"]], "not run"
    finally:
        env.link.lose_answers_to = None
    eventually(
        lambda: journal_pending(state_dir(env.cluster, gw)) == [], 5, "the journal delivered"
    )
    eventually(lambda: announcements(gw) == 0, 3, "no announcement pending")
    time.sleep(1.5)  # more reconciler rounds
    (event,) = env.events()[before:]
    assert_event_of(event, result, "erin")


# -- the compensation backlog --------------------------------------------------------------------


def test_a_delete_refused_by_the_se_is_retried_from_the_backlog_until_the_se_takes_it(
    env: Shared, keys: DevKeys
) -> None:
    gw = env.gws[0]
    env.refuse_deletes()
    file_id = env.lied_upload(gw, keys)
    assert file_id in env.stored(), "the refused delete removed the file anyway"
    eventually(lambda: (owed_deletes(gw) or 0) >= 1, 3, "a backlog item")
    # retried from the backlog while the SE still refuses (2 requests a try: gc, files)
    eventually(lambda: len(env.deletes_of(file_id)) >= 4, 5, "a retry from the backlog")
    assert file_id in env.stored()

    env.proxy.refuse = None  # the SE takes deletes again
    eventually(lambda: file_id not in env.stored(), 8, "the owed delete")
    # The proxy records the SE's answer once it has read it: a moment after the SE acted.
    eventually(
        lambda: env.deletes_of(file_id)[-1] == (f"/api/v1/gc/{file_id}", 200), 3, "its answer"
    )
    for each in env.gws:
        eventually(
            lambda each=each: owed_deletes(each) == 0,
            3,
            f"an empty backlog on {each.name}",
        )


def test_a_delete_owed_while_redis_is_down_waits_in_the_journal_and_is_done_later(
    env: Shared, keys: DevKeys
) -> None:
    gw = env.gws[0]
    env.refuse_deletes()
    env.cluster.redis.kill()
    file_id = env.lied_upload(gw, keys)  # on the last view of the registry
    (pending,) = journal_pending(state_dir(env.cluster, gw))
    assert (pending["type"], pending["file_id"]) == ("compensation", file_id)
    assert pending["node_url"] == env.proxy.url
    eventually(
        lambda: (owed_deletes(gw) or 0) >= 1,
        3,
        "the journaled item in the backlog metric",
    )
    assert file_id in env.stored()

    env.proxy.refuse = None
    env.cluster.restart_redis()
    eventually(lambda: file_id not in env.stored(), 10, "the owed delete")
    eventually(lambda: owed_deletes(gw) == 0, 3, "an empty backlog")
    assert journal_pending(state_dir(env.cluster, gw)) == []


def test_two_gateways_see_the_same_nodes_and_work_a_backlog_item_once(
    env: Shared, keys: DevKeys
) -> None:
    gw1, gw2 = env.gws
    url = redis_url(env.cluster.redis)
    listing = ["--id", "se-manual", "--url", "http://127.0.0.1:9", "--mode", "ro"]
    assert nodes(url, "add", *listing).returncode == 0
    try:
        for gw in (gw1, gw2):
            eventually(
                lambda gw=gw: set(node_view(gw)) == {"se-1", "se-manual"}, 2, f"{gw.name}'s view"
            )
    finally:
        assert nodes(url, "remove", "--id", "se-manual").returncode == 0
    for gw in (gw1, gw2):
        eventually(lambda gw=gw: set(node_view(gw)) == {"se-1"}, 2, f"{gw.name} forgetting")

    env.refuse_deletes()
    file_id = env.lied_upload(gw1, keys)
    for gw in (gw1, gw2):  # one backlog, seen by both
        eventually(lambda gw=gw: owed_deletes(gw) == 1, 3, f"{gw.name}")
    # The SE takes deletes again, slowly: whoever works the item holds it for 2.5 s,
    # through two or more rounds of the other gateway, which must leave it alone.
    env.proxy.delay = lambda method, path: 2.5 if method == "DELETE" else 0.0
    env.proxy.refuse = None
    eventually(lambda: file_id not in env.stored(), 10, "the owed delete")
    for gw in (gw1, gw2):
        eventually(lambda gw=gw: owed_deletes(gw) == 0, 3, gw.name)
    time.sleep(2)  # the other gateway's next rounds
    deletes = env.deletes_of(file_id)
    assert [d for d in deletes if d[1] != 503] == [(f"/api/v1/gc/{file_id}", 200)], deletes
    done = [
        e
        for gw in (gw1, gw2)
        for e in log_events(gw, "compensation_done")
        if e["file_id"] == file_id
    ]
    assert len(done) == 1, done
