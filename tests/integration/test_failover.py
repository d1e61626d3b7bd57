"""Failover between Storage Elements, end to end: two reference SEs that register
themselves in a real Redis, a gateway reading that registry, and SEs that die (SIGKILL)
mid-body, fill up, refuse the mode, fail, or are drained by an operator.

A slow client (`paced_put`) lets a test act while the gateway is streaming to an SE.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from ingester_gateway.reference.processes import (
    free_port,
    gateway,
    service_account_env,
)
from tests.faults import StorageElementProxy, se_upload_reply, server_error
from tests.kit import (
    AS_SENT,
    DevKeys,
    MiB,
    assert_error_envelope,
    eventually,
    http_call,
    metric,
    put,
    sha256_hex,
)
from tests.stack import (
    Cluster,
    node_view,
    nodes,
    paced_put,
    redis_gateway,
    redis_url,
    registered_se,
)

NODES = ("se-a", "se-b")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Cluster]:
    """se-a (preferred: priority 10) and se-b (priority 20), 10 GiB each, and a gateway
    with the default 8 MiB replay buffer, all on one Redis."""
    workdir = tmp_path_factory.mktemp("failover")
    with Cluster.running(workdir, keys) as cluster:
        for se_id, priority in zip(NODES, (10, 20), strict=True):
            cluster.add_se(registered_se(workdir, keys, cluster.redis, se_id, priority=priority))
        env = {"INGESTER_REPLAY_BUFFER_BYTES": "8MiB"}
        cluster.add_gateway(redis_gateway(workdir, keys, cluster.redis, cluster.tokens, env=env))
        yield cluster


@pytest.fixture
def healthy(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with both SEs up and seen healthy by the gateway, before and after."""
    yield restore(cluster)
    restore(cluster)


def restore(cluster: Cluster) -> Cluster:
    for se in cluster.ses.values():
        if se.process is None or se.process.poll() is not None:
            se.start()  # same port, same data dir

    def all_ok() -> bool:
        view = node_view(cluster.gw)
        return all(
            view.get(se_id, {}).get("status") == "ok"
            and view[se_id]["circuit"] == "closed"
            and not view[se_id]["draining"]
            for se_id in NODES
        )

    eventually(all_ok, 10, "both SEs seen healthy by the gateway")
    return cluster


def receiving_se(cluster: Cluster) -> str | None:
    """The SE that holds a partial file (the one the upload is streaming to)."""
    holding = [se_id for se_id in NODES if cluster.files(se_id).partials()]
    assert len(holding) <= 1, holding
    return holding[0] if holding else None


def other(se_id: str) -> str:
    (rest,) = [n for n in NODES if n != se_id]
    return rest


def snapshot(cluster: Cluster) -> dict[str, list[str]]:
    return {se_id: cluster.files(se_id).stored_ids() for se_id in NODES}


def assert_no_partial_and_no_orphan(
    cluster: Cluster, before: dict[str, list[str]], stored: dict[str, str]
) -> None:
    """After the backlog drained: each SE holds what it held plus the files answered with
    201 (`stored`: file_id -> SE id), and no partial."""
    eventually(
        lambda: metric(cluster.gw, "ingester_outbox_jobs", kind="compensation") == 0,
        10,
        "an empty backlog",
    )
    for se_id in NODES:
        assert cluster.files(se_id).settled_partials() == [], f"{se_id} holds a partial"
        expected = sorted([*before[se_id], *(f for f, on in stored.items() if on == se_id)])
        assert cluster.files(se_id).stored_ids() == expected, f"{se_id} holds an orphan"


# -- an SE dies mid-body -------------------------------------------------------------------


def test_se_killed_mid_body_replays_a_small_upload_on_the_other_node(
    healthy: Cluster, keys: DevKeys
) -> None:
    """6 MiB (under the 8 MiB replay buffer): the SE receiving it is SIGKILLed once it
    has written 3 MiB (blocks a smaller buffer would have dropped); the gateway replays
    what it holds on the other SE and the client, still sending, gets its 201."""
    cluster = healthy
    before = snapshot(cluster)
    data = os.urandom(6 * MiB)
    killed: list[str] = []

    def kill_the_receiving_se(sent: int) -> None:
        if killed or (se_id := receiving_se(cluster)) is None:
            return
        if cluster.files(se_id).partial_bytes() >= 3 * MiB:
            cluster.ses[se_id].kill()
            killed.append(se_id)

    answer = paced_put(
        cluster.gw,
        "/api/v1/files/replayed.bin?compress=false",
        keys.auth(),
        data,
        chunk=64 * 1024,
        pause=0.01,
        between=kill_the_receiving_se,
    )
    assert killed, "the SE never held 3 MiB of the upload"
    assert answer.status == 201, answer.body
    result = answer.json()
    survivor = other(killed[0])
    assert result["storage_element_id"] == survivor
    assert result["checksum"] == result["stored_checksum"] == sha256_hex(data)
    assert cluster.files(survivor).download(result["file_id"]) == data
    assert metric(cluster.gw, "ingester_node_uploads_total", node=killed[0], outcome="failed_over")

    restore(cluster)  # the killed SE back on its data dir: its partial is swept at start
    assert_no_partial_and_no_orphan(cluster, before, {result["file_id"]: survivor})


def test_se_killed_mid_body_past_the_replay_buffer_is_503_retry_later(
    healthy: Cluster, keys: DevKeys
) -> None:
    """40 MiB: once over 8 MiB have gone to the SE they are no longer held, so when
    that SE dies the upload cannot move; the client is told to retry (503, Retry-After,
    storage_failed_mid_upload) and nothing is left on either SE."""
    cluster = healthy
    before = snapshot(cluster)
    data = os.urandom(40 * MiB)
    killed: list[str] = []

    def kill_past_the_replay_buffer(sent: int) -> None:
        if killed or (se_id := receiving_se(cluster)) is None:
            return
        if cluster.files(se_id).partial_bytes() >= 10 * MiB:
            cluster.ses[se_id].kill()
            killed.append(se_id)

    started = time.monotonic()
    answer = paced_put(
        cluster.gw,
        "/api/v1/files/big.bin?compress=false",
        keys.auth(),
        data,
        chunk=256 * 1024,
        pause=0.005,
        between=kill_past_the_replay_buffer,
    )
    assert killed, "the SE never held 10 MiB of the upload"
    error = assert_error_envelope(answer, 503, "storage_failed_mid_upload")
    assert "resumable" in error["message"]
    assert int(answer.headers["retry-after"]) > 0
    assert time.monotonic() - started < 20
    assert cluster.files(other(killed[0])).partials() == [], "it was not moved on"

    restore(cluster)
    assert_no_partial_and_no_orphan(cluster, before, {})


def test_se_killed_after_storing_moves_the_upload_and_its_copy_is_deleted_once_it_is_back(
    healthy: Cluster, keys: DevKeys
) -> None:
    """se-c, the best priority, is SIGKILLed right after it stored the upload and before
    its answer got out (its proxy kills it on the way back). The upload moves to se-a
    (201); the copy on se-c cannot be deleted while se-c is down, so the delete waits in
    the backlog and is done once se-c is restarted on its data dir: nothing is left."""
    cluster = healthy
    before = snapshot(cluster)
    workdir = cluster.workdir
    se_port = free_port()
    with StorageElementProxy(f"http://127.0.0.1:{se_port}", name="se-c-proxy") as proxy:
        se_c = registered_se(
            workdir, keys, cluster.redis, "se-c", priority=1, port=se_port, public_url=proxy.url
        )
        cluster.add_se(se_c)
        try:
            eventually(
                lambda: node_view(cluster.gw).get("se-c", {}).get("status") == "ok",
                5,
                "se-c in the gateway's view",
            )

            def die_after_storing(
                method: str, path: str, status: int, body: bytes
            ) -> tuple[int, bytes]:
                if path == "/api/v1/files/upload" and status == 201:
                    se_c.kill()
                    return 502, b'{"detail": "upstream connection lost"}'
                return status, body

            proxy.rewrite = die_after_storing
            data = os.urandom(MiB)
            answer = put(cluster.gw, keys.auth(), data, name="after-store.bin", query=AS_SENT)
            proxy.rewrite = None
            assert answer.status == 201, answer.body
            result = answer.json()
            assert result["storage_element_id"] == "se-a"
            (stored,) = proxy.uploads()
            orphan = json.loads(stored.reply)["file_id"]
            assert cluster.files("se-c").stored_ids() == [orphan], "se-c never stored it"
            eventually(
                lambda: (metric(cluster.gw, "ingester_outbox_jobs", kind="compensation") or 0) >= 1,
                3,
                "the owed delete in the backlog",
            )

            se_c.start()  # same port, same data dir
            eventually(
                lambda: cluster.files("se-c").stored_ids() == [], 10, "the copy on se-c deleted"
            )
            assert_no_partial_and_no_orphan(cluster, before, {result["file_id"]: "se-a"})
            assert cluster.files("se-c").settled_partials() == []
        finally:
            se_c.stop()
            del cluster.ses["se-c"]


def test_a_retry_on_the_same_node_is_not_undone_by_the_earlier_tries_late_delete(
    healthy: Cluster, keys: DevKeys
) -> None:
    """One node, behind a proxy: the first try is stored and answered 500, its delete
    goes through but the answer is lost (503), so that delete is owed in the backlog.
    The retry lands on the same node and gets the 201. When the backlog does the owed
    delete, it must remove the first try's copy, never the file the client was given."""
    cluster = healthy
    se_b = cluster.ses["se-b"]
    before = snapshot(cluster)
    with StorageElementProxy(se_b.url, name="se-b-proxy") as proxy:
        lost: list[str] = []

        def first_try_fails_and_delete_answers_are_lost(
            method: str, path: str, status: int, body: bytes
        ) -> tuple[int, bytes]:
            if method == "POST" and status == 201 and not lost:
                lost.append(json.loads(body)["file_id"])
                return 500, b'{"detail": "Internal Server Error"}'
            if method == "DELETE" and len(proxy.deletes()) <= 2:  # gc, then files: both lost
                return 503, b'{"detail": "unavailable"}'
            return status, body

        proxy.rewrite = first_try_fails_and_delete_answers_are_lost
        entries = [{"id": "se-b", "url": proxy.url, "mode": "rw"}]
        env = service_account_env(cluster.tokens)
        gw = gateway(cluster.workdir, keys.public_path, entries, env=env, name="one-node-gw")
        with gw:
            data = os.urandom(64 * 1024)
            answer = put(gw, keys.auth(), data, name="retried.bin", query=AS_SENT)
            assert answer.status == 201, answer.body
            result = answer.json()
            assert len(proxy.uploads()) == 2, "the upload was not retried on the same node"
            eventually(lambda: len(proxy.deletes()) == 3, 10, "the owed delete, from the backlog")
            eventually(
                lambda: metric(gw, "ingester_outbox_jobs", kind="compensation") == 0,
                3,
                "an empty backlog",
            )
            assert lost[0] not in cluster.files("se-b").stored_ids()
            assert cluster.files("se-b").download(result["file_id"]) == data, (
                "the owed delete of the first try removed the file of the 201"
            )
    assert_no_partial_and_no_orphan(cluster, before, {result["file_id"]: "se-b"})


# -- an SE that is full or refuses the mode: the next node, transparently --------------------


def test_all_ses_down_is_a_fast_503_with_retry_after(healthy: Cluster, keys: DevKeys) -> None:
    """Both SEs SIGKILLed: at once (the view still lists them: connections refused on
    every try) and once their records lapsed (no node at all), the client gets 503 +
    Retry-After within a second or two, never a hang (default retry settings)."""
    cluster = healthy
    for se_id in NODES:
        cluster.ses[se_id].kill()

    def fast_503() -> None:
        started = time.monotonic()
        answer = put(
            cluster.gw, keys.auth(), os.urandom(256 * 1024), name="nowhere.bin", query=AS_SENT
        )
        assert time.monotonic() - started < 1.5, "a dead cluster made the client wait"
        assert_error_envelope(answer, 503, "no_storage_available")
        assert int(answer.headers["retry-after"]) > 0

    fast_503()
    eventually(lambda: not node_view(cluster.gw), 5, "the dead SEs leaving the view")
    fast_503()


# -- circuit breaker ----------------------------------------------------------------------


COOLDOWN = 2.0


def test_breaker_opens_after_three_failures_and_a_half_open_probe_closes_it(
    healthy: Cluster, keys: DevKeys
) -> None:
    """se-a behind a proxy answering 500 (after storing: the gateway removes the copy)
    is preferred by priority; se-b takes what se-a fails. After 3 failures se-a's
    circuit is open and it gets nothing; after the cool-down one probe goes through (a
    failure opens it again); once se-a is sound again, the probe closes it."""
    cluster = healthy
    se_a = cluster.ses["se-a"]
    before = snapshot(cluster)
    with StorageElementProxy(se_a.url, name="se-a-proxy") as proxy:
        entries = [
            {"id": "se-a", "url": proxy.url, "mode": "rw", "priority": 1},
            {"id": "se-b", "url": cluster.ses["se-b"].url, "mode": "rw", "priority": 100},
        ]
        env = {
            "INGESTER_BREAKER_FAILURES": "3",
            "INGESTER_BREAKER_COOLDOWN_SECONDS": str(COOLDOWN),
            **service_account_env(cluster.tokens),
        }
        gw = gateway(cluster.workdir, keys.public_path, entries, env=env, name="breaker-gw")
        with gw:

            def upload() -> str:
                answer = put(gw, keys.auth(), os.urandom(64 * 1024), name="b.bin", query=AS_SENT)
                assert answer.status == 201, answer.body
                return str(answer.json()["storage_element_id"])

            def circuit() -> tuple[float | None, str]:
                view = http_call(gw.url, "GET", "/health/ready").json()["nodes"]
                return metric(gw, "ingester_node_circuit_state", node="se-a"), view["se-a"][
                    "circuit"
                ]

            proxy.rewrite = se_upload_reply(server_error)
            for failures in (1, 2):
                assert upload() == "se-b"
                assert circuit() == (0, "closed"), f"open after {failures} failures"
            assert upload() == "se-b"
            assert circuit() == (2, "open")
            assert len(proxy.uploads()) == 3

            started = time.monotonic()
            assert upload() == "se-b"
            assert time.monotonic() - started < 1, "an open circuit must not cost time"
            assert len(proxy.uploads()) == 3, "an upload went to an open circuit"

            time.sleep(COOLDOWN)
            assert upload() == "se-b"  # the half-open probe fails: open again
            assert len(proxy.uploads()) == 4
            assert circuit() == (2, "open")

            proxy.rewrite = None
            time.sleep(COOLDOWN)
            assert upload() == "se-a"  # the probe succeeds
            assert circuit() == (0, "closed")
            assert upload() == "se-a"
    # every copy se-a stored before answering 500 was removed
    assert len(cluster.files("se-a").stored_ids()) == len(before["se-a"]) + 2


# -- draining -----------------------------------------------------------------------------


def test_drained_node_takes_no_new_uploads_and_finishes_the_one_in_flight(
    healthy: Cluster, keys: DevKeys
) -> None:
    """`nodes drain` on se-a, the preferred node, while an upload streams to it: the
    uploads that start meanwhile go to se-b, the one in flight ends stored on se-a."""
    cluster = healthy
    url = redis_url(cluster.redis)
    data = os.urandom(4 * MiB)
    drained: list[str] = []
    meanwhile: list[str] = []

    def drain_the_receiving_se(sent: int) -> None:
        if drained or sent < MiB or (se_id := receiving_se(cluster)) is None:
            return
        done = nodes(url, "drain", "--id", se_id)
        assert done.returncode == 0, done.stderr
        drained.append(se_id)
        eventually(lambda: node_view(cluster.gw)[se_id]["draining"], 2, "the drain seen")
        for n in range(4):
            answer = put(
                cluster.gw, keys.auth(), os.urandom(100_000), name=f"m{n}.bin", query=AS_SENT
            )
            assert answer.status == 201, answer.body
            meanwhile.append(answer.json()["storage_element_id"])

    try:
        answer = paced_put(
            cluster.gw,
            "/api/v1/files/inflight.bin?compress=false",
            keys.auth(),
            data,
            chunk=64 * 1024,
            pause=0.01,
            between=drain_the_receiving_se,
        )
        assert drained == ["se-a"], "se-a was not receiving the upload after 1 MiB"
        assert meanwhile == ["se-b"] * 4, "a new upload went to the drained node"
        assert answer.status == 201, answer.body
        result = answer.json()
        assert result["storage_element_id"] == drained[0], "the in-flight upload was moved"
        assert cluster.files(drained[0]).download(result["file_id"]) == data
    finally:
        for se_id in drained:
            assert nodes(url, "drain", "--id", se_id, "--undo").returncode == 0
