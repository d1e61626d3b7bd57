"""The gateway's node view from Redis, against a real redis-server: the gateways' own
registry (SEs heartbeating their records) through a Redis crash, drains, new nodes and
dead ones; and the artStore Admin Module's document with its change announcements.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingester_gateway.reference.processes import storage_element
from ingester_gateway.registry.artstore import CHANNEL, DOCUMENT_KEY
from tests.kit import AS_SENT, DevKeys, assert_error_envelope, eventually, metric, put
from tests.stack import (
    HEARTBEAT_TTL,
    REFRESH_SECONDS,
    Cluster,
    node_view,
    nodes,
    ready,
    redis_gateway,
    redis_url,
    registered_se,
)


def stored_on(cluster: Cluster, keys: DevKeys, name: str = "r.bin") -> str | None:
    """Upload 64 KiB: the SE that stored it, or None for a 503."""
    answer = put(cluster.gw, keys.auth(), os.urandom(64 * 1024), name=name, query=AS_SENT)
    if answer.status == 503:
        assert_error_envelope(answer, 503, "no_storage_available")
        return None
    assert answer.status == 201, answer.body
    return str(answer.json()["storage_element_id"])


def stale(cluster: Cluster) -> bool:
    return bool(ready(cluster.gw)["registry_stale"])


def test_redis_crash_keeps_the_last_view_then_drains_new_and_dead_nodes_are_followed(
    tmp_path: Path, keys: DevKeys
) -> None:
    with Cluster.running(tmp_path, keys) as cluster:
        cluster.add_se(registered_se(tmp_path, keys, cluster.redis, "se-old"))
        cluster.add_gateway(redis_gateway(tmp_path, keys, cluster.redis, cluster.tokens))
        assert stored_on(cluster, keys) == "se-old"
        assert not stale(cluster)
        assert metric(cluster.gw, "ingester_registry_stale") == 0

        # Redis dies: the last view stays in use, marked stale.
        cluster.redis.kill()
        eventually(lambda: stale(cluster), 3 * REFRESH_SECONDS + 1, "registry_stale")
        assert metric(cluster.gw, "ingester_registry_stale") == 1
        for n in range(3):
            started = time.monotonic()
            assert stored_on(cluster, keys, f"outage-{n}.bin") == "se-old"
            assert time.monotonic() - started < 2, "an upload waited on the dead Redis"
        assert ready(cluster.gw)["nodes"]["se-old"]["status"] == "ok"

        # Redis back, empty, on the same port: the view is fresh again.
        cluster.restart_redis()
        eventually(lambda: not stale(cluster), 8, "registry_stale cleared")
        assert metric(cluster.gw, "ingester_registry_stale") == 0
        db = cluster.client()
        eventually(lambda: db.exists("ingester:node:se-old"), 8, "se-old registered again")
        eventually(lambda: "se-old" in node_view(cluster.gw), 2, "se-old back in the view")

        # The old node is drained, a new one registers: it gets the uploads at once.
        drained = nodes(redis_url(cluster.redis), "drain", "--id", "se-old")
        assert drained.returncode == 0, drained.stderr
        eventually(lambda: node_view(cluster.gw)["se-old"]["draining"], 2, "se-old draining")
        assert stored_on(cluster, keys) is None, "an upload went to a draining node"
        new = cluster.add_se(registered_se(tmp_path, keys, cluster.redis, "se-new"))
        registered_at = time.monotonic()
        eventually(lambda: stored_on(cluster, keys) == "se-new", 2, "an upload on se-new")
        assert time.monotonic() - registered_at < 2

        # se-new's heartbeat stops: it leaves the view within its TTL (+ a refresh).
        new.kill()
        killed_at = time.monotonic()
        assert "se-new" in node_view(cluster.gw)
        eventually(
            lambda: "se-new" not in node_view(cluster.gw),
            HEARTBEAT_TTL + REFRESH_SECONDS + 1,
            "se-new leaving the view",
        )
        assert time.monotonic() - killed_at <= HEARTBEAT_TTL + REFRESH_SECONDS + 0.5
        assert set(node_view(cluster.gw)) == {"se-old"}
        db.close()


# -- the artStore Admin Module's document ---------------------------------------------------


def admin_entry(
    se_id: str, url: str, priority: int, *, available: bool = True, writable: bool = True
) -> dict[str, Any]:
    return {
        "id": int(se_id.rsplit("-", 1)[1]) + 40,  # the Admin's database id, not the identity
        "element_id": se_id,
        "name": f"Storage {se_id}",
        "api_url": url,
        "mode": "rw",
        "status": "online" if available else "offline",
        "capacity_bytes": 10 * 2**30,
        "used_bytes": 0,
        "priority": priority,
        "is_writable": writable,
        "is_available": available,
    }


def test_artstore_document_drives_selection_and_announced_changes_are_picked_up_at_once(
    tmp_path: Path, keys: DevKeys
) -> None:
    """INGESTER_REGISTRY=artstore, with a 30 s refresh: only the announcement on
    artstore:service_discovery can explain a change seen within a second. Nodes are
    known by their element_id (as the real Ingester knows them), not the database id."""
    with Cluster.running(tmp_path, keys) as cluster:
        ses = {
            se_id: cluster.add_se(storage_element(tmp_path, keys.public_path, element_id=se_id))
            for se_id in ("se-1", "se-2", "se-3")
        }
        db = cluster.client()
        version = 0

        def publish(*entries: dict[str, Any]) -> None:
            nonlocal version
            version += 1
            document = {
                "version": version,
                "timestamp": time.time(),
                "count": len(entries),
                "storage_elements": list(entries),
            }
            db.set(DOCUMENT_KEY, json.dumps(document))
            db.publish(CHANNEL, json.dumps({"event": "storage_elements_updated"}))

        def uploads_go_to(se_id: str) -> Callable[[], bool]:
            return lambda: all(stored_on(cluster, keys) == se_id for _ in range(3))

        publish(admin_entry("se-1", ses["se-1"].url, 1), admin_entry("se-2", ses["se-2"].url, 2))
        env = {"INGESTER_REGISTRY_REFRESH_SECONDS": "30"}
        cluster.add_gateway(
            redis_gateway(
                tmp_path, keys, cluster.redis, cluster.tokens, registry="artstore", env=env
            )
        )
        assert set(node_view(cluster.gw)) == {"se-1", "se-2"}
        assert uploads_go_to("se-1")(), "the best priority was not chosen"

        changes: list[tuple[str, tuple[dict[str, Any], ...], str]] = [
            (
                "se-1 unavailable",
                (
                    admin_entry("se-1", ses["se-1"].url, 1, available=False),
                    admin_entry("se-2", ses["se-2"].url, 2),
                ),
                "se-2",
            ),
            (
                "se-3 appears with a better priority",
                (
                    admin_entry("se-1", ses["se-1"].url, 1, available=False),
                    admin_entry("se-2", ses["se-2"].url, 2),
                    admin_entry("se-3", ses["se-3"].url, 0),
                ),
                "se-3",
            ),
            (
                "se-3 no longer writable",
                (
                    admin_entry("se-1", ses["se-1"].url, 1, available=False),
                    admin_entry("se-2", ses["se-2"].url, 2),
                    admin_entry("se-3", ses["se-3"].url, 0, writable=False),
                ),
                "se-2",
            ),
            ("se-1 available again", (admin_entry("se-1", ses["se-1"].url, 1),), "se-1"),
        ]
        for what, entries, expected in changes:
            publish(*entries)
            announced = time.monotonic()
            eventually(uploads_go_to(expected), 1.5, f"{what}: uploads on {expected}")
            assert time.monotonic() - announced < 1.5, what
        assert set(node_view(cluster.gw)) == {"se-1"}
        for se_id in ("se-2", "se-3"):
            uploaded = cluster.files(se_id).stored_ids()
            assert uploaded, f"{se_id} never got an upload"
        db.close()
