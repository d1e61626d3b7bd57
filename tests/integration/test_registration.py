"""Every stored file is registered in artStore's file registry (the reference Admin
Module, a real process), or durably on its way there, or removed — never stored and
unknown. Real redis-server, reference SEs and gateways on loopback."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from ingester_gateway.reference.processes import (
    SERVICE_CLIENT,
    ServerProcess,
    admin_module,
    free_port,
    gateway,
    se_entry,
)
from tests.kit import (
    DevKeys,
    assert_error_envelope,
    decompress,
    eventually,
    http_call,
    multipart_form,
    post_form,
    put,
    sha256_hex,
)
from tests.stack import Artstore, se_get, start_artstore

TEXT = b"2026-12-01T10:00:00Z INFO gateway stored a file for artStore\n" * 3000


@pytest.fixture(scope="module")
def artstore(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[Artstore]:
    with start_artstore(tmp_path_factory.mktemp("artstore"), keys) as running_artstore:
        yield running_artstore


@pytest.fixture(scope="module")
def gw(artstore: Artstore) -> Iterator[ServerProcess]:
    with artstore.gateway("gw-registering") as server:
        yield server


def download(artstore: Artstore, node_id: str, file_id: str) -> bytes:
    return se_get(artstore.se_of(node_id), artstore.keys, f"/api/v1/files/{file_id}/download")


def instant(iso: str | None) -> datetime | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00"))


UPLOADS = [
    ("raw-zstd", "notes.log", "", "zstd"),
    ("raw-brotli", "b.txt", "compression_algorithm=brotli", "brotli"),
    ("raw-none", "r.bin", "compress=false", "none"),
    ("form-gzip-temporary", "отчёт.csv", None, "gzip"),
]


@pytest.mark.parametrize(("case", "name", "query", "codec"), UPLOADS)
def test_a_stored_file_is_registered_with_every_field_and_verifiable_both_ways(
    artstore: Artstore,
    gw: ServerProcess,
    keys: DevKeys,
    case: str,
    name: str,
    query: str | None,
    codec: str,
) -> None:
    auth = keys.auth("alice", name="Alice A.")
    metadata = {"project": "q4", "n": 1}
    if query is None:
        form, form_type = multipart_form(
            {
                "retention_policy": "temporary",
                "ttl_days": "3",
                "compression_algorithm": "gzip",
                "description": "kept three days",
                "metadata": json.dumps(metadata),
            },
            TEXT,
            filename=name,
        )
        answer = post_form(gw, auth, form, form_type, headers={"X-Forwarded-For": "203.0.113.9"})
    else:
        meta = "metadata=" + urllib.parse.quote(json.dumps(metadata))
        answer = put(gw, auth, TEXT, name=name, query="&".join(q for q in (query, meta) if q))
    assert answer.status == 201, answer.body
    result = answer.json()
    assert result["registration"] == "registered"
    assert result["compression_algorithm"] == codec

    record = artstore.record(result["file_id"])
    assert record is not None
    temporary = query is None
    expected = {
        "file_id": result["file_id"],
        "original_filename": name,
        "storage_filename": result["storage_filename"],
        "file_size": result["stored_size"],
        "checksum_sha256": result["stored_checksum"],
        "content_type": result["content_type"],
        "description": "kept three days" if temporary else None,
        "storage_element_id": "se-edit" if temporary else "se-rw",
        "storage_path": f"/files/{result['file_id']}",
        "compressed": codec != "none",
        "compression_algorithm": None if codec == "none" else codec,
        "original_size": len(TEXT),
        "uploaded_by": "alice",
        "upload_source_ip": "127.0.0.1",  # X-Forwarded-For is not believed from anyone
        "retention_policy": "temporary" if temporary else "permanent",
        "ttl_days": 3 if temporary else None,
    }
    assert {k: record[k] for k in expected} == expected
    assert instant(record["ttl_expires_at"]) == instant(result["ttl_expires_at"])
    assert (record["ttl_expires_at"] is None) == (not temporary)
    facts = record["user_metadata"].pop("_ingester")
    assert record["user_metadata"] == metadata  # the client's own keys, untouched
    assert facts["original_sha256"] == sha256_hex(TEXT) == result["checksum"]

    # The record lets a client verify the bytes the SE holds, and the original.
    stored = download(artstore, record["storage_element_id"], result["file_id"])
    assert sha256_hex(stored) == record["checksum_sha256"]
    assert len(stored) == record["file_size"]
    original = decompress(codec, stored) if record["compressed"] else stored
    assert sha256_hex(original) == facts["original_sha256"]
    assert len(original) == record["original_size"]

    # The Admin Module announced it, once, in the format the Query Module reads.
    (event,) = artstore.events(result["file_id"])
    assert event["event_type"] == "file:created"
    assert json.loads(event["metadata"])["checksum_sha256"] == record["checksum_sha256"]


def test_the_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    artstore: Artstore, keys: DevKeys
) -> None:
    with artstore.gateway("gw-behind-proxy", {"INGESTER_TRUSTED_PROXIES": "127.0.0.1"}) as gw:
        forwarded = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
        answer = put(gw, keys.auth(), TEXT, name="fwd.txt", headers=forwarded)
        assert answer.status == 201, answer.body
        record = artstore.record(answer.json()["file_id"])
        assert record is not None
        assert record["upload_source_ip"] == "203.0.113.9"  # the last hop not ours


def test_a_registration_the_admin_refuses_is_a_502_with_its_reason_and_the_copy_goes(
    artstore: Artstore, keys: DevKeys
) -> None:
    strict = admin_module(
        artstore.workdir, keys.private_path, extra=["--max-ttl-days", "10"], port=free_port()
    )
    with strict:
        client_id, secret = SERVICE_CLIENT
        env = {
            "INGESTER_ADMIN_URL": strict.url,
            "INGESTER_SERVICE_CLIENT_ID": client_id,
            "INGESTER_SERVICE_CLIENT_SECRET": secret,
        }
        entries = [se_entry(artstore.edit_se, "edit")]
        gw = gateway(artstore.workdir, keys.public_path, entries, env=env, name="gw-strict")
        with gw:
            before = set(os.listdir(artstore.workdir / "se-edit-data" / "files"))
            query = "retention_policy=temporary&ttl_days=30"
            answer = put(gw, keys.auth(), TEXT, name="long.txt", query=query)
            error = assert_error_envelope(answer, 502, "registration_refused")
            assert "ttl_days: Input should be less than or equal to 10" in error["message"]
            after = set(os.listdir(artstore.workdir / "se-edit-data" / "files"))
            assert after == before, "the refused file's copy is still on the SE"
            query = "retention_policy=temporary&ttl_days=5"
            ok = put(gw, keys.auth(), TEXT, name="short.txt", query=query)
            assert ok.status == 201, ok.body


def registered_once(artstore: Artstore, file_id: str) -> bool:
    return artstore.record(file_id) is not None and len(artstore.events(file_id)) == 1


def progress_of(gw: ServerProcess, keys: DevKeys, upload_id: str) -> dict[str, Any]:
    answer = http_call(gw, "GET", f"/api/v1/uploads/{upload_id}", headers=keys.auth())
    assert answer.status == 200, answer.body
    return dict(answer.json())


def test_uploads_while_the_admin_is_down_are_pending_then_registered_exactly_once(
    artstore: Artstore, keys: DevKeys
) -> None:
    """Two uploads, a gateway restart (their registrations wait in Redis), a third;
    then the Admin Module comes back: each file registered and announced once."""
    with artstore.gateway("gw-outage") as gw:
        artstore.admin.stop()
        try:
            results = []
            for n in range(3):
                if n == 2:
                    gw.stop()
                    gw.start()
                upload_id = f"outage-upload-{n}"
                answer = put(
                    gw, keys.auth(), TEXT, name=f"o{n}.txt", headers={"X-Upload-Id": upload_id}
                )
                assert answer.status == 201, answer.body
                assert answer.json()["registration"] == "pending"
                assert progress_of(gw, keys, upload_id)["registration"] == "pending"
                results.append(answer.json())
        finally:
            artstore.admin.start()
        for result in results:
            eventually(lambda r=result: registered_once(artstore, r["file_id"]), 30, "registered")
        last = results[-1]["upload_id"]  # known to this process: its progress follows
        assert progress_of(gw, keys, last)["registration"] == "registered"
        time.sleep(1.5)  # later outbox rounds register nothing twice
        for result in results:
            assert len(artstore.events(result["file_id"])) == 1


def test_with_redis_gone_a_pending_registration_survives_a_gateway_restart(
    artstore: Artstore, keys: DevKeys
) -> None:
    """Redis away: the registration waits in the gateway's journal; the gateway stops,
    the next process adopts the journal and registers the file once the Admin is back."""
    dead_redis = {"INGESTER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    gw = artstore.gateway("gw-journal", dead_redis)
    with gw:
        artstore.admin.stop()
        try:
            answer = put(gw, keys.auth(), TEXT, name="journaled.txt")
            assert answer.status == 201, answer.body
            assert answer.json()["registration"] == "pending"
            file_id = answer.json()["file_id"]
        finally:
            gw.stop()  # SIGTERM: the journal file stays for the next process
            artstore.admin.start()
        assert artstore.record(file_id) is None
        gw.start()
        eventually(lambda: registered_once(artstore, file_id), 30, "registered by the next process")
