"""Finalize's pure parts: what a record or an SE says becomes a source, the copy's
plan (the stored bytes as they are), and the 202."""

from __future__ import annotations

import msgspec

from ingester_gateway.admin.wire import FileRecord
from ingester_gateway.finalize.service import copy_plan, reply_of, source_of_record, source_of_se
from ingester_gateway.finalize.transactions import Transaction
from ingester_gateway.registry import NodeRecord
from ingester_gateway.upstream.wire import StoredFileInfo

EDIT = NodeRecord(id="se-edit", url="http://edit:8010", mode="edit")


def record(**changes: object) -> FileRecord:
    fields: dict[str, object] = {
        "file_id": "f-1",
        "original_filename": "report.csv",
        "storage_filename": "report.csv.zst",
        "file_size": 400,
        "checksum_sha256": "b" * 64,
        "content_type": "text/csv",
        "storage_element_id": "se-edit",
        "storage_path": "/files/f-1",
        "compressed": True,
        "compression_algorithm": "zstd",
        "original_size": 1000,
        "uploaded_by": "alice",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "retention_policy": "temporary",
        "ttl_days": 3,
        "user_metadata": {"k": "v", "_ingester": {"original_sha256": "a" * 64}},
    }
    return msgspec.convert({**fields, **changes}, FileRecord)


def test_a_records_stored_bytes_are_the_source_and_its_facts_the_original() -> None:
    source = source_of_record(record(), EDIT)
    assert (source.node_id, source.node_url) == ("se-edit", "http://edit:8010")
    assert (source.file_size, source.checksum_sha256, source.codec) == (400, "b" * 64, "zstd")
    assert (source.original_size, source.original_sha256) == (1000, "a" * 64)
    assert source.user_metadata == {"k": "v"}  # the gateway's key stays behind


def test_an_uncompressed_record_is_its_own_original() -> None:
    plain = record(compressed=False, compression_algorithm=None, user_metadata=None)
    source = source_of_record(plain, EDIT)
    assert source.codec == "none"
    assert source.original_sha256 == "b" * 64


def test_what_an_edit_se_knows_of_a_file_is_a_source_too() -> None:
    meta = {
        "user_metadata": {"k": 1},
        "original_filename": "отчёт.csv",
        "original_size": 1000,
        "original_sha256": "a" * 64,
        "compression_algorithm": "gzip",
    }
    info = StoredFileInfo(
        file_id="f-1",
        file_size=400,
        checksum="b" * 64,
        original_filename="otchet.csv.gz",
        uploaded_by="alice",
        retention_policy="temporary",
        fields={
            "compression_algorithm": "gzip",
            "content_type": "text/csv",
            "metadata": msgspec.json.encode(meta).decode(),
        },
    )
    source = source_of_se(info, EDIT)
    assert (source.codec, source.content_type) == ("gzip", "text/csv")
    assert (source.original_filename, source.storage_filename) == ("отчёт.csv", "otchet.csv.gz")
    assert (source.original_size, source.original_sha256) == (1000, "a" * 64)
    assert source.user_metadata == {"k": 1}


def test_the_copy_sends_the_stored_bytes_as_they_are_under_their_stored_name() -> None:
    plan = copy_plan(source_of_record(record(), EDIT))
    assert not plan.recode
    assert (plan.codec, plan.storage_name, plan.stored_type) == (
        "zstd",
        "report.csv.zst",
        "application/zstd",
    )
    assert (plan.exact_size, plan.reservation, plan.ttl_days) == (400, 400, None)


def test_the_202_tells_where_the_file_goes_and_how_far_it_is() -> None:
    tx = Transaction(
        transaction_id="t1",
        owner="alice",
        status="copying",
        source=source_of_record(record(), EDIT),
        created_at=0.0,
        target_storage_element_id="se-rw",
    )
    reply = reply_of(tx)
    assert (reply.file_id, reply.status, reply.source_storage_element_id) == (
        "f-1",
        "copying",
        "se-edit",
    )
    assert (reply.target_storage_element_id, reply.checksum_verified) == ("se-rw", False)
    assert reply.finalized_at is None and reply.cleanup_scheduled_at is None
