"""Finalize (temporary -> permanent), end to end on real processes: the stored bytes go
from the edit SE to the rw SE through the upload core, the registry follows, the
source goes after the safety margin; a gateway killed mid-copy, or a target SE dying
mid-copy, leaves the file whole in one place and known to the registry."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from ingester_gateway.reference.processes import ServerProcess
from tests.kit import (
    DevKeys,
    MiB,
    assert_error_envelope,
    eventually,
    http_call,
    pseudo_random_blocks,
    put,
)
from tests.stack import Artstore, se_get, start_artstore

SIZE = 300 * MiB
MARGIN = 3.0  # INGESTER_FINALIZE_SAFETY_MARGIN of the test gateways


@pytest.fixture(scope="module")
def artstore(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Artstore]:
    with start_artstore(tmp_path_factory.mktemp("finalize"), keys) as running_artstore:
        yield running_artstore


def finalizing_gateway(artstore: Artstore, name: str) -> ServerProcess:
    return artstore.gateway(name, {"INGESTER_FINALIZE_SAFETY_MARGIN": str(MARGIN)})


def upload_temporary(gw: ServerProcess, keys: DevKeys, seed: int) -> tuple[dict[str, Any], str]:
    """A 300 MiB temporary file (random: stored as is); its 201 and its sha256."""
    digest = hashlib.sha256()

    def blocks() -> Iterator[bytes]:
        for block in pseudo_random_blocks(seed, SIZE):
            digest.update(block)
            yield block

    answer = put(
        gw, keys.auth("alice"), blocks(), name="big.bin", query="retention_policy=temporary"
    )
    assert answer.status == 201, answer.body
    result = answer.json()
    assert (result["storage_element_id"], result["registration"]) == ("se-edit", "registered")
    return result, digest.hexdigest()


def finalize(gw: ServerProcess, keys: DevKeys, file_id: str, sub: str = "alice") -> dict[str, Any]:
    answer = http_call(gw, "POST", f"/api/v1/finalize/{file_id}", b"", keys.auth(sub))
    assert answer.status == 202, answer.body
    return dict(answer.json())


def status(gw: ServerProcess, keys: DevKeys, transaction_id: str) -> dict[str, Any]:
    answer = http_call(gw, "GET", f"/api/v1/finalize/{transaction_id}/status", None, keys.auth())
    assert answer.status == 200, answer.body
    return dict(answer.json())


def ended(
    gw: ServerProcess, keys: DevKeys, transaction_id: str, timeout: float = 90
) -> dict[str, Any]:
    return eventually(
        lambda: (
            (s := status(gw, keys, transaction_id))["status"]
            in ("completed", "failed", "rolled_back")
            and s
        ),
        timeout,
        "the transaction's end",
    )


def holds(se: ServerProcess, file_id: str) -> bool:
    return (se.log_path.parent / f"{se.name}-data" / "files" / f"{file_id}.attr.json").exists()


def stored_sha256(artstore: Artstore, se: ServerProcess, file_id: str) -> str:
    return hashlib.sha256(
        se_get(se, artstore.keys, f"/api/v1/files/{file_id}/download")
    ).hexdigest()


def test_a_temporary_file_is_finalized_onto_the_rw_se_and_its_source_goes_after_the_margin(
    artstore: Artstore, keys: DevKeys
) -> None:
    with finalizing_gateway(artstore, "gw-finalize") as gw:
        result, sha = upload_temporary(gw, keys, seed=1)
        file_id = result["file_id"]
        started = finalize(gw, keys, file_id)
        assert started["status"] == "copying"
        assert started["source_storage_element_id"] == "se-edit"
        tx = started["transaction_id"]
        final = ended(gw, keys, tx)
        assert final["status"] == "completed", final
        assert final["progress_percent"] == 100
        # The copy is byte-identical, and the registry points at it, permanent, no TTL.
        assert stored_sha256(artstore, artstore.se, file_id) == sha
        record = artstore.record(file_id)
        assert record is not None
        assert (record["storage_element_id"], record["retention_policy"]) == ("se-rw", "permanent")
        assert (record["ttl_days"], record["ttl_expires_at"]) == (None, None)
        assert record["checksum_sha256"] == sha and record["file_size"] == SIZE
        assert [e["event_type"] for e in artstore.events(file_id)] == [
            "file:created",
            "file:updated",
        ]
        # The progress route knows it too.
        progress = http_call(gw, "GET", f"/api/v1/uploads/{tx}", None, keys.auth()).json()
        assert (progress["state"], progress["storage_element_id"]) == ("stored", "se-rw")
        # The source stays for the margin, then goes.
        assert holds(artstore.edit_se, file_id)
        eventually(lambda: not holds(artstore.edit_se, file_id), MARGIN + 15, "the source's delete")


def test_only_the_uploader_or_an_admin_may_finalize_and_a_permanent_file_is_refused(
    artstore: Artstore, keys: DevKeys
) -> None:
    with finalizing_gateway(artstore, "gw-finalize-rules") as gw:
        answer = put(
            gw, keys.auth("alice"), b"x" * 5000, name="t.txt", query="retention_policy=temporary"
        )
        file_id = answer.json()["file_id"]
        refused = http_call(gw, "POST", f"/api/v1/finalize/{file_id}", b"", keys.auth("mallory"))
        assert_error_envelope(refused, 403, "forbidden")
        by_admin = http_call(
            gw, "POST", f"/api/v1/finalize/{file_id}", b"", keys.auth("root", role="super_admin")
        )
        assert by_admin.status == 202, by_admin.body
        assert ended(gw, keys, by_admin.json()["transaction_id"])["status"] == "completed"
        again = http_call(gw, "POST", f"/api/v1/finalize/{file_id}", b"", keys.auth("alice"))
        assert_error_envelope(again, 409, "already_permanent")
        unknown = http_call(
            gw, "POST", "/api/v1/finalize/9b0c3c7e-0000-4000-8000-000000000000", b"", keys.auth()
        )
        assert_error_envelope(unknown, 404, "not_found")
        bad = http_call(gw, "POST", f"/api/v1/finalize/{file_id}", b"{not json", keys.auth())
        assert_error_envelope(bad, 400, "bad_request")


def test_a_gateway_killed_mid_copy_leaves_a_transaction_the_next_process_ends_cleanly(
    artstore: Artstore, keys: DevKeys
) -> None:
    gw = finalizing_gateway(artstore, "gw-killed")
    with gw:
        result, sha = upload_temporary(gw, keys, seed=2)
        file_id = result["file_id"]
        tx = finalize(gw, keys, file_id)["transaction_id"]
        eventually(lambda: status(gw, keys, tx)["progress_percent"] > 5, 30, "the copy under way")
        gw.kill()  # SIGKILL: no goodbyes
        gw.start()
        final = ended(gw, keys, tx)
        record = artstore.record(file_id)
        assert record is not None  # one record, whatever the end
        if final["status"] == "completed":
            assert record["storage_element_id"] == "se-rw"
            assert stored_sha256(artstore, artstore.se, file_id) == sha
        else:
            assert final["status"] == "rolled_back", final
            assert record["storage_element_id"] == "se-edit"
            assert not holds(artstore.se, file_id)
        assert holds(artstore.edit_se, file_id)  # the margin has not passed: source kept
        assert stored_sha256(artstore, artstore.edit_se, file_id) == sha


def test_the_target_se_dying_mid_copy_rolls_back_and_leaves_the_source_whole(
    artstore: Artstore, keys: DevKeys
) -> None:
    with finalizing_gateway(artstore, "gw-target-dies") as gw:
        result, sha = upload_temporary(gw, keys, seed=3)
        file_id = result["file_id"]
        tx = finalize(gw, keys, file_id)["transaction_id"]
        eventually(lambda: status(gw, keys, tx)["progress_percent"] > 5, 30, "the copy under way")
        artstore.se.kill()
        try:
            final = ended(gw, keys, tx)
            assert final["status"] == "rolled_back", final
            assert final["error_message"]
            record = artstore.record(file_id)
            assert record is not None
            assert (record["storage_element_id"], record["retention_policy"]) == (
                "se-edit",
                "temporary",
            )
            assert stored_sha256(artstore, artstore.edit_se, file_id) == sha
        finally:
            artstore.se.start()
        assert not holds(artstore.se, file_id)
