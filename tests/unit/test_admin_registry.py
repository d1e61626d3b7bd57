"""The reference Admin Module's pure parts: registration and update rules in FastAPI's
422 shape, the record as JSON and as event metadata, the option syntaxes, the
storage-elements entries; and the SQLite registry on a temporary file (no sockets)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import fakeredis
import msgspec
import pytest
import redis.exceptions

from ingester_gateway.reference.admin_module.elements import (
    ElementsDocument,
    StorageElementSpec,
    element_entry,
)
from ingester_gateway.reference.admin_module.events import FileEventAnnouncer, event_fields
from ingester_gateway.reference.admin_module.records import FileRecord, registration, updated
from ingester_gateway.reference.admin_module.registry import FileExists, FileRegistry
from ingester_gateway.reference.admin_module.tokens import AdminUserSpec, ServiceAccountSpec
from ingester_gateway.reference.admin_module.validation import (
    ValidationFailed,
    decode_object,
    parse_uuid,
)
from ingester_gateway.registry.artstore import parse_document
from ingester_gateway.upstream.wire import ElementInfo
from tests.kit import RECORD_KEYS, run

NOW = "2026-01-02T03:04:05.000006Z"
LATER = "2026-01-03T00:00:00Z"
FILE_ID = "3b8f0e6a-1111-4222-8333-444455556666"


def body(**changes: Any) -> dict[str, Any]:
    """A valid temporary registration, with `changes` (None values are sent as null;
    use drop= to leave fields out)."""
    drop = changes.pop("drop", ())
    base: dict[str, Any] = {
        "file_id": FILE_ID,
        "original_filename": "report.pdf",
        "storage_filename": "report.pdf",
        "file_size": 1234,
        "checksum_sha256": "ab" * 32,
        "content_type": "application/pdf",
        "description": "q3",
        "retention_policy": "temporary",
        "ttl_expires_at": "2026-02-01T00:00:00+00:00",
        "ttl_days": 30,
        "storage_element_id": "se-edit-1",
        "storage_path": f"/files/{FILE_ID}",
        "compressed": True,
        "compression_algorithm": "zstd",
        "original_size": 5000,
        "uploaded_by": "alice",
        "upload_source_ip": "10.0.0.7",
        "user_metadata": {"team": "finance"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if k not in drop}


def errors_of(call: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationFailed) as caught:
        call()
    return [msgspec.to_builtins(e) for e in caught.value.errors]


def test_a_valid_registration_is_stored_normalized() -> None:
    record = registration(body(file_id=FILE_ID.upper(), checksum_sha256="AB" * 32), NOW)
    assert record.file_id == FILE_ID
    assert record.checksum_sha256 == "ab" * 32
    assert record.ttl_expires_at == "2026-02-01T00:00:00Z"  # UTC written as Z, like pydantic
    assert record.created_at == record.updated_at == NOW
    assert record.tags == []


def test_a_zero_byte_file_is_a_valid_registration() -> None:
    assert registration(body(file_size=0), NOW).file_size == 0


def test_optional_fields_may_be_left_out() -> None:
    optional = ("description", "compression_algorithm", "original_size", "upload_source_ip")
    record = registration(body(drop=(*optional, "compressed", "user_metadata")), NOW)
    assert record.description is None and record.user_metadata is None
    assert record.compressed is False


def test_every_bad_field_is_listed_in_fastapis_shape() -> None:
    errors = errors_of(lambda: registration(body(file_id="not-a-uuid", ttl_days=366), NOW))
    assert errors == [
        {
            "type": "uuid_parsing",
            "loc": ["body", "file_id"],
            "msg": "Input should be a valid UUID",
            "input": "not-a-uuid",
        },
        {
            "type": "less_than_equal",
            "loc": ["body", "ttl_days"],
            "msg": "Input should be less than or equal to 365",
            "input": 366,
            "ctx": {"le": 365},
        },
    ]


@pytest.mark.parametrize(
    ("changes", "loc", "type_"),
    [
        ({"drop": ("content_type",)}, ["body", "content_type"], "missing"),
        ({"content_type": None}, ["body", "content_type"], "string_type"),
        ({"uploaded_by": None}, ["body", "uploaded_by"], "string_type"),
        ({"drop": ("uploaded_by",)}, ["body", "uploaded_by"], "missing"),
        ({"checksum_sha256": "ab" * 31}, ["body", "checksum_sha256"], "string_too_short"),
        ({"checksum_sha256": "zz" * 32}, ["body", "checksum_sha256"], "value_error"),
        ({"file_size": -1}, ["body", "file_size"], "greater_than_equal"),
        ({"file_size": "12"}, ["body", "file_size"], "int_type"),
        ({"file_size": True}, ["body", "file_size"], "int_type"),
        ({"ttl_days": 0}, ["body", "ttl_days"], "greater_than_equal"),
        ({"original_filename": ""}, ["body", "original_filename"], "string_too_short"),
        ({"original_filename": "x" * 501}, ["body", "original_filename"], "string_too_long"),
        ({"content_type": "x" * 256}, ["body", "content_type"], "string_too_long"),
        ({"description": "x" * 1001}, ["body", "description"], "string_too_long"),
        ({"compression_algorithm": "x" * 21}, ["body", "compression_algorithm"], "string_too_long"),
        ({"uploaded_by": "x" * 101}, ["body", "uploaded_by"], "string_too_long"),
        ({"upload_source_ip": "x" * 46}, ["body", "upload_source_ip"], "string_too_long"),
        ({"retention_policy": "forever"}, ["body", "retention_policy"], "enum"),
        ({"ttl_expires_at": "next week"}, ["body", "ttl_expires_at"], "datetime_parsing"),
        ({"user_metadata": ["a"]}, ["body", "user_metadata"], "dict_type"),
        ({"compressed": None}, ["body", "compressed"], "bool_type"),
        ({"file_id": 7}, ["body", "file_id"], "uuid_type"),
    ],
)
def test_a_field_out_of_bounds_is_refused_with_its_location(
    changes: dict[str, Any], loc: list[str], type_: str
) -> None:
    errors = errors_of(lambda: registration(body(**changes), NOW))
    assert [(e["loc"], e["type"]) for e in errors] == [(loc, type_)]


def test_any_compression_algorithm_name_up_to_20_characters_is_accepted() -> None:
    assert registration(body(compression_algorithm="x" * 20), NOW).compression_algorithm


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ttl_days": None}, "ttl_expires_at and ttl_days are required for temporary files"),
        ({"drop": ("ttl_expires_at",)}, "ttl_expires_at and ttl_days are required"),
        ({"retention_policy": "permanent"}, "ttl_expires_at and ttl_days must be None"),
        (
            {"retention_policy": "permanent", "ttl_days": None},
            "ttl_expires_at and ttl_days must be None",
        ),
    ],
)
def test_retention_and_ttl_must_agree(changes: dict[str, Any], message: str) -> None:
    [error] = errors_of(lambda: registration(body(**changes), NOW))
    assert error["type"] == "value_error" and error["loc"] == ["body"]
    assert message in error["msg"]


def test_a_permanent_registration_without_ttl_is_valid() -> None:
    record = registration(
        body(retention_policy="permanent", drop=("ttl_days", "ttl_expires_at")), NOW
    )
    assert record.retention_policy == "permanent" and record.ttl_days is None


def test_finalize_update_moves_the_file_and_clears_its_ttl() -> None:
    record = registration(body(), NOW)
    change = {
        "retention_policy": "permanent",
        "ttl_days": None,
        "ttl_expires_at": None,
        "storage_element_id": "se-rw-1",
        "file_id": "ignored",  # not a field an update changes
    }
    result = updated(record, change, LATER)
    assert (result.retention_policy, result.ttl_days, result.ttl_expires_at) == (
        "permanent",
        None,
        None,
    )
    assert result.storage_element_id == "se-rw-1"
    assert result.file_id == FILE_ID and result.created_at == NOW and result.updated_at == LATER


def test_an_update_is_checked_against_the_retention_rule_on_its_result() -> None:
    record = registration(body(), NOW)
    [error] = errors_of(lambda: updated(record, {"retention_policy": "permanent"}, LATER))
    assert "must be None for permanent files" in error["msg"]


def test_an_update_may_not_null_a_required_field() -> None:
    record = registration(body(), NOW)
    errors = errors_of(lambda: updated(record, {"storage_element_id": None}, LATER))
    assert errors[0]["loc"] == ["body", "storage_element_id"]


def test_the_record_round_trips_through_json() -> None:
    record = registration(body(tags=["q3"]), NOW)
    assert msgspec.json.decode(msgspec.json.encode(record), type=FileRecord) == record


def test_event_fields_and_metadata_keys_are_exactly_the_contracts() -> None:
    record = registration(body(), NOW)
    fields = event_fields("file:created", record, LATER)
    assert list(fields) == ["event_type", "timestamp", "file_id", "storage_element_id", "metadata"]
    assert fields["storage_element_id"] == "se-edit-1"
    metadata = msgspec.json.decode(fields["metadata"])
    assert list(metadata) == RECORD_KEYS
    assert metadata["tags"] == []


class LosesFirstAnswer(fakeredis.FakeAsyncRedis):
    """Runs every script, but the first one's answer never arrives (the link failed)."""

    lost = False

    async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().evalsha(*args, **kwargs)
        if not self.lost:
            self.lost = True
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return result


def announce_with(client: fakeredis.FakeAsyncRedis, retry_seconds: float) -> bool:
    announcer = FileEventAnnouncer(client, retry_seconds=retry_seconds, rng=random.Random(7))
    return run(announcer.announce("file:created", registration(body(), NOW), LATER))


def test_an_announcement_waits_out_a_short_redis_outage() -> None:
    """Redis away for a moment (a Sentinel failover): the event is added once it is back."""
    server = fakeredis.FakeServer()
    server.connected = False
    client = fakeredis.FakeAsyncRedis(server=server)

    async def outage_then_announce() -> bool:
        asyncio.get_running_loop().call_later(0.3, setattr, server, "connected", True)
        announcer = FileEventAnnouncer(client, retry_seconds=3.0, rng=random.Random(7))
        return await announcer.announce("file:created", registration(body(), NOW), LATER)

    assert run(outage_then_announce()) is True
    assert [e[1][b"file_id"] for e in run(client.xrange("file-events"))] == [FILE_ID.encode()]


def test_an_announcement_whose_answer_was_lost_is_not_added_twice() -> None:
    client = LosesFirstAnswer()
    assert announce_with(client, retry_seconds=3.0) is True
    assert client.lost and run(client.xlen("file-events")) == 1


def test_an_announcement_redis_never_takes_is_lost_after_its_retries() -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    assert announce_with(fakeredis.FakeAsyncRedis(server=server), retry_seconds=0.3) is False


@pytest.mark.parametrize(
    ("raw", "type_"),
    [(b"", "missing"), (b"{nope", "json_invalid"), (b"[1]", "model_attributes_type")],
)
def test_a_body_that_is_not_a_json_object_is_422(raw: bytes, type_: str) -> None:
    [error] = errors_of(lambda: decode_object(raw))
    assert error["type"] == type_


def test_a_path_id_that_is_not_a_uuid_is_refused_at_its_location() -> None:
    [error] = errors_of(lambda: parse_uuid("abc", ["path", "file_id"]))
    assert error["loc"] == ["path", "file_id"]
    assert parse_uuid(FILE_ID.replace("-", ""), ["path", "file_id"]) == FILE_ID


def test_account_and_element_option_syntax() -> None:
    assert ServiceAccountSpec.parse("ingester:s3cret") == ServiceAccountSpec(
        "ingester", "s3cret", "admin", 100
    )
    assert ServiceAccountSpec.parse("bot:x:readonly:5").rate_limit == 5
    assert AdminUserSpec.parse("root:pw").role == "super_admin"
    assert AdminUserSpec.parse("ops:pw:readonly").role == "readonly"
    spec = StorageElementSpec.parse("se-1=http://127.0.0.1:8010/,mode=edit")
    assert spec == StorageElementSpec("se-1", "http://127.0.0.1:8010", "edit")
    for bad in ("se-1", "se-1=ftp://x", "se-1=http://x,mode=fast", "se-1=http://x,prio=1"):
        with pytest.raises(ValueError):
            StorageElementSpec.parse(bad)
    for bad_account in ("only-id", "id:secret:super_admin", "id:secret:user:0", "id::user"):
        with pytest.raises(ValueError):
            ServiceAccountSpec.parse(bad_account)
    with pytest.raises(ValueError):
        AdminUserSpec.parse("root:pw:user")


def test_an_element_is_listed_as_it_reports_itself_and_offline_with_what_it_last_said() -> None:
    spec = StorageElementSpec("edit-a", "http://127.0.0.1:9", "rw")
    info = ElementInfo("se-edit-a", "edit", "ok", 50, 1000, 200, 3)
    online = element_entry(spec, 7, info, True)
    assert (online.id, online.element_id, online.mode, online.status) == (
        7,
        "se-edit-a",
        "edit",
        "online",
    )
    assert online.is_writable and online.is_available and online.storage_type == "local"
    offline = element_entry(spec, 7, info, False)
    assert (offline.status, offline.is_writable, offline.is_available) == ("offline", False, False)
    assert offline.capacity_bytes == 1000 and offline.mode == "edit"
    never_seen = element_entry(spec, 8, None, False)
    assert (never_seen.element_id, never_seen.mode) == ("edit-a", "rw")
    readonly = element_entry(spec, 9, ElementInfo("se-ro", "ro", "ok", 1, 1, 0, 0), True)
    assert readonly.is_available and not readonly.is_writable

    document = ElementsDocument(1, NOW, 2, [online, offline])
    records = parse_document(msgspec.json.encode(document))
    assert [r.status for r in records] == ["ok", "down"]
    assert records[0].capacity_available == 800


def test_the_registry_keeps_records_across_a_reopen(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "registry.db"
        first = FileRegistry(path)
        await first.open()
        record = registration(body(), NOW)
        await first.register(record)
        with pytest.raises(FileExists):
            await first.register(record)
        ids = await first.element_ids(["se-a", "se-b"])
        await first.close()

        second = FileRegistry(path)
        await second.open()
        assert await second.get(FILE_ID) == record
        assert await second.element_ids(["se-b", "se-c", "se-a"]) == ids | {"se-c": 3}
        moved = await second.update(FILE_ID, lambda r: updated(r, {"description": "x"}, LATER))
        assert moved is not None and moved.description == "x"
        deleted = await second.delete(FILE_ID, "manual", LATER)
        assert deleted is not None and deleted[2] is True
        again = await second.delete(FILE_ID, "other", "2030-01-01T00:00:00Z")
        assert again is not None and again[2] is False and again[1].deleted_at == LATER
        assert await second.get(FILE_ID) is None
        assert (await second.page(10, 0)).total == 0
        with pytest.raises(FileExists):  # a deleted id is still taken, as in artStore
            await second.register(record)
        await second.close()

    run(scenario())


def test_a_failed_update_leaves_the_record_as_it_was(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = FileRegistry(tmp_path / "registry.db")
        await registry.open()
        record = registration(body(), NOW)
        await registry.register(record)
        with pytest.raises(ValidationFailed):
            await registry.update(
                FILE_ID, lambda r: updated(r, {"retention_policy": "permanent"}, LATER)
            )
        assert await registry.get(FILE_ID) == record
        assert await registry.update("00000000-0000-0000-0000-000000000000", lambda r: r) is None
        await registry.close()

    run(scenario())
