"""Making a stored file known to artStore: what the Admin's registry is told of it
(`registration_of`, pure), and FileRecorder, the upload's record sink: registered at
once, or durably queued when the Admin (or Redis) cannot be reached, refused when the
Admin will not have it; the outbox's registration and announcement jobs."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import fakeredis
import msgspec
import pytest
import structlog

from ingester_gateway.admin.client import AdminClient
from ingester_gateway.admin.transport import TransportError
from ingester_gateway.admin.wire import FileEvent, FileRecord, FileRegistration, created_event
from ingester_gateway.auth.credentials import ServiceAccount
from ingester_gateway.auth.verify import Principal
from ingester_gateway.models import UploadOptions, UploadResult, iso_utc
from ingester_gateway.observability import Metrics
from ingester_gateway.outbox.events import FileAnnouncer
from ingester_gateway.outbox.jobs import AnnounceFile, DeleteFile, Job, RegisterFile, kind_of
from ingester_gateway.outbox.journal import Journal
from ingester_gateway.outbox.queue import Outbox, due_key
from ingester_gateway.outbox.records import FileRecorder, registration_of
from ingester_gateway.reference.admin_module.records import registration as admin_accepts
from ingester_gateway.upload.plan import UploadRequest
from ingester_gateway.upload.ports import RecordRefused, RecordUnavailable
from tests.kit import FakeClock, FakeSession, run

T = TypeVar("T")
ADMIN = "http://admin:8000"
TOKEN_URL = f"{ADMIN}/api/v1/auth/token"
FILES = f"{ADMIN}/api/v1/files"
FILE_ID = "3b8f0e6a-1111-4222-8333-444455556666"
STREAM = "file-events"


def result(**changes: Any) -> UploadResult:
    fields: dict[str, Any] = {
        "file_id": FILE_ID,
        "original_filename": "report.pdf",
        "storage_filename": "report.pdf.zst",
        "content_type": "application/pdf",
        "file_size": 1000,
        "stored_size": 400,
        "compressed": True,
        "compression_algorithm": "zstd",
        "compression_ratio": 2.5,
        "checksum": "a" * 64,
        "stored_checksum": "b" * 64,
        "uploaded_at": "2026-01-02T03:04:05.000Z",
        "storage_element_id": "se-1",
        "storage_element_url": "http://se-1:8010",
        "retention_policy": "permanent",
        "ttl_expires_at": None,
        "upload_id": "u-1",
        **changes,
    }
    return UploadResult(**fields)


def temporary(**changes: Any) -> UploadResult:
    return result(
        retention_policy="temporary",
        ttl_days=30,
        ttl_expires_at="2026-02-01T03:04:05.000Z",
        storage_element_id="se-edit-1",
        **changes,
    )


def request(
    sub: str = "alice", client_address: str | None = "10.0.0.7", **options: Any
) -> UploadRequest:
    principal = Principal(
        sub=sub, role="user", token_type="access", name=None, client_id=None, expires_at=2**40
    )
    return UploadRequest(
        upload_id="u-1",
        request_id="req-1",
        principal=principal,
        filename="report.pdf",
        declared_content_type=None,
        options=UploadOptions(**options),
        client_address=client_address,
    )


# -- registration_of: what the registry is told ----------------------------------------------


def test_the_registry_is_told_the_size_and_sha256_of_the_stored_bytes() -> None:
    reg = registration_of(result(), request())
    assert (reg.file_size, reg.checksum_sha256) == (400, "b" * 64)
    assert (reg.original_size, reg.compressed, reg.compression_algorithm) == (1000, True, "zstd")


def test_an_uncompressed_file_names_no_compression_algorithm() -> None:
    reg = registration_of(
        result(compressed=False, compression_algorithm="none", stored_size=1000), request()
    )
    assert (reg.compressed, reg.compression_algorithm) == (False, None)
    assert (reg.file_size, reg.original_size) == (1000, 1000)


def test_the_file_is_named_where_the_se_keeps_it() -> None:
    reg = registration_of(result(), request())
    assert (reg.file_id, reg.original_filename, reg.storage_filename) == (
        FILE_ID,
        "report.pdf",
        "report.pdf.zst",
    )
    assert (reg.storage_element_id, reg.storage_path) == ("se-1", f"/files/{FILE_ID}")
    assert (reg.content_type, reg.retention_policy) == ("application/pdf", "permanent")


def test_a_temporary_file_carries_its_ttl() -> None:
    reg = registration_of(temporary(), request(retention_policy="temporary"))
    assert (reg.retention_policy, reg.ttl_days, reg.ttl_expires_at) == (
        "temporary",
        30,
        "2026-02-01T03:04:05.000Z",
    )


def test_a_permanent_file_carries_no_ttl_even_if_the_result_had_one() -> None:
    """The Admin refuses a permanent registration with a TTL (422)."""
    stray = result(ttl_days=30, ttl_expires_at="2026-02-01T03:04:05.000Z")
    reg = registration_of(stray, request())
    assert (reg.ttl_days, reg.ttl_expires_at) == (None, None)


@pytest.mark.parametrize(
    ("description", "told"),
    [("q3 report", "q3 report"), ("", None), ("x" * 1500, "x" * 1000)],
)
def test_the_description_is_cut_to_1000_characters_and_empty_is_none(
    description: str, told: str | None
) -> None:
    assert registration_of(result(), request(description=description)).description == told


def test_uploaded_by_is_the_uploaders_subject_cut_to_100_characters() -> None:
    assert registration_of(result(), request(sub="alice")).uploaded_by == "alice"
    assert registration_of(result(), request(sub="s" * 150)).uploaded_by == "s" * 100


@pytest.mark.parametrize(
    ("address", "told"),
    [("10.0.0.7", "10.0.0.7"), (None, None), ("", None), ("f" * 60, "f" * 45)],
)
def test_the_source_ip_is_the_clients_address(address: str | None, told: str | None) -> None:
    assert registration_of(result(), request(client_address=address)).upload_source_ip == told


def test_the_content_type_is_cut_to_255_characters() -> None:
    long_type = "application/x-" + "y" * 300
    assert (
        registration_of(result(content_type=long_type), request()).content_type == (long_type[:255])
    )


def test_user_metadata_keeps_the_clients_keys_and_adds_the_gateways_facts() -> None:
    client_metadata = {"project": "apollo", "tags": ["a", "b"], "nested": {"k": 1}, "n": None}
    reg = registration_of(result(), request(metadata=client_metadata))
    assert reg.user_metadata == {
        **client_metadata,
        "_ingester": {
            "original_sha256": "a" * 64,
            "original_size": 1000,
            "stored_sha256": "b" * 64,
            "stored_size": 400,
        },
    }


def test_a_name_longer_than_255_characters_is_shortened_keeping_its_extension() -> None:
    long_name = "r" * 300 + ".pdf"
    reg = registration_of(result(original_filename=long_name), request())
    assert len(reg.original_filename) == 255
    assert reg.original_filename == "r" * 251 + ".pdf"
    assert reg.user_metadata["_ingester"]["original_filename"] == long_name


def test_a_name_of_255_characters_is_told_as_it_is() -> None:
    name = "r" * 251 + ".pdf"
    reg = registration_of(result(original_filename=name), request())
    assert reg.original_filename == name
    assert "original_filename" not in reg.user_metadata["_ingester"]


@pytest.mark.parametrize(
    "long_name",
    ["n" * 300, "n" * 250 + "." + "e" * 40, "." + "h" * 300],
    ids=["no extension", "extension too long to keep", "dot file"],
)
def test_a_long_name_without_a_short_extension_is_cut_at_255(long_name: str) -> None:
    reg = registration_of(result(original_filename=long_name), request())
    assert reg.original_filename == long_name[:255]
    assert reg.user_metadata["_ingester"]["original_filename"] == long_name


@pytest.mark.parametrize(
    ("upload", "options"),
    [
        (result(), {}),
        (temporary(), {"retention_policy": "temporary", "ttl_days": 30}),
        (result(compressed=False, compression_algorithm="none"), {"description": ""}),
        (result(original_filename="ж" * 400 + ".txt"), {"metadata": {"k": "v"}}),
    ],
    ids=["permanent", "temporary", "uncompressed", "long name"],
)
def test_the_registration_is_one_the_admin_module_accepts(
    upload: UploadResult, options: dict[str, Any]
) -> None:
    """The reference Admin Module's rules (BRIEF's contract) take what we send."""
    body = msgspec.json.decode(msgspec.json.encode(registration_of(upload, request(**options))))
    admin_accepts(body, "2026-01-02T03:04:05Z")


# -- an Admin Module over an in-process session ----------------------------------------------

Reply = tuple[int, Any] | Exception


class AdminModule:
    """The token endpoint and `POST /api/v1/files`, answering as scripted (then 201);
    what was posted, with which token."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.posted: list[tuple[str, dict[str, Any]]] = []  # (authorization, body)
        self.tokens_issued = 0
        self.records: dict[str, Reply] = {}  # GET /api/v1/files/{id}
        self.session = FakeSession(
            {("POST", TOKEN_URL): self.token, ("POST", FILES): self.register}
        )

    async def token(self, url: str, kwargs: Mapping[str, Any]) -> tuple[int, bytes]:
        assert json.loads(kwargs["data"])["grant_type"] == "client_credentials"
        self.tokens_issued += 1
        return 200, json.dumps(
            {"access_token": f"t{self.tokens_issued}", "expires_in": 3600}
        ).encode()

    async def register(self, url: str, kwargs: Mapping[str, Any]) -> tuple[int, bytes]:
        self.posted.append((kwargs["headers"]["Authorization"], json.loads(kwargs["data"])))
        reply = self.replies.pop(0) if self.replies else (201, {"file_id": FILE_ID})
        if isinstance(reply, Exception):
            raise reply
        status, body = reply
        return status, json.dumps(body).encode()

    def answer_get(self, file_id: str, reply: Reply) -> None:
        async def route(url: str, kwargs: Mapping[str, Any]) -> tuple[int, bytes]:
            if isinstance(reply, Exception):
                raise reply
            status, body = reply
            return status, json.dumps(body).encode()

        self.session.routes[("GET", f"{FILES}/{file_id}")] = route

    def down(self) -> None:
        """Nothing answers at the Admin's address any more."""
        self.session.routes.clear()

    def client(self) -> AdminClient:
        session: Any = self.session  # stands in for aiohttp's ClientSession
        account = ServiceAccount(
            TOKEN_URL, "ingester", "s3cret", lambda: session, clock=FakeClock()
        )
        return AdminClient(SessionTransport(self.session), account)


class SessionTransport:
    """The Admin client's transport over the FakeSession's routes: what a route raises
    (a refused connection, a timeout) is a transport error, as a dead socket would be."""

    def __init__(self, session: FakeSession) -> None:
        self.session = session

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, bytes]:
        try:
            async with self.session.request(
                method, ADMIN + path, headers=headers, data=body
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(str(exc)) from None


class DiskFullJournal(Journal):
    async def append(self, entry: Job) -> None:
        raise OSError(28, "No space left on device")


class World:
    """A FileRecorder over an outbox on a fake Redis and a journal; with an Admin Module
    (`admin`) or, without one, announcing on the stream itself (`announce`)."""

    def __init__(
        self,
        directory: Path,
        admin: AdminModule | None = None,
        *,
        announce: bool = False,
        journal: Journal | None = None,
    ) -> None:
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeAsyncRedis(server=self.server)
        self.journal = journal or Journal(directory)
        self.journal.open()
        self.clock = FakeClock(1_767_323_045.0)  # 2026-01-02T03:04:05Z
        self.outbox = Outbox(self.redis, self.journal, Metrics(), clock=self.clock)
        self.admin = admin
        self.registered: list[str] = []
        self.recorder = FileRecorder(
            self.outbox,
            admin.client() if admin is not None else None,
            FileAnnouncer(self.redis, STREAM) if announce else None,
            self.clock,
            registered=self.registered.append,
        )

    def redis_down(self) -> None:
        self.server.connected = False

    def redis_up(self) -> None:
        self.server.connected = True

    async def queued(self, kind: str) -> list[Job]:
        """Jobs of `kind` in the outbox, Redis and journal alike."""
        journaled = [job for job in self.journal.pending() if kind_of(job) == kind]
        raw = await self.redis.zrange(due_key(kind), 0, -1)
        return [*journaled, *(msgspec.json.decode(item, type=Job) for item in raw)]

    async def entries(self) -> list[dict[str, str]]:
        raw = await self.redis.xrange(STREAM)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]


def in_world(
    tmp_path: Path, scenario: Callable[[World], Awaitable[T]], *args: Any, **kwargs: Any
) -> T:
    async def go() -> T:
        world = World(tmp_path, *args, **kwargs)
        try:
            return await scenario(world)
        finally:
            world.journal.close()

    return run(go())


def stored(world: World, upload: UploadResult | None = None) -> Awaitable[str]:
    return world.recorder.stored(upload or result(), request())


def expected_registration() -> dict[str, Any]:
    encoded = msgspec.json.encode(registration_of(result(), request()))
    decoded: dict[str, Any] = msgspec.json.decode(encoded)
    return decoded


# -- FileRecorder.stored with an Admin Module ------------------------------------------------


def test_a_file_the_admin_takes_is_registered_at_once(tmp_path: Path) -> None:
    admin = AdminModule((201, {"file_id": FILE_ID}))

    async def scenario(world: World) -> list[object]:
        state = await stored(world)
        return [state, await world.queued("registration"), world.journal.pending()]

    assert in_world(tmp_path, scenario, admin) == ["registered", [], []]
    assert admin.posted == [("Bearer t1", expected_registration())]


def test_a_file_the_registry_already_holds_counts_as_registered(tmp_path: Path) -> None:
    """A retry after an answer that was lost: the Admin says 400 "already exists"."""
    admin = AdminModule((400, {"detail": f"File with ID {FILE_ID} already exists"}))

    async def scenario(world: World) -> list[object]:
        return [await stored(world), await world.queued("registration")]

    assert in_world(tmp_path, scenario, admin) == ["registered", []]


@pytest.mark.parametrize(
    "reply",
    [
        (500, {"detail": "Internal Server Error"}),
        (503, {"detail": "database is down"}),
        aiohttp.ClientConnectionError("connection refused"),
        TimeoutError(),
    ],
    ids=["500", "503", "connection refused", "timeout"],
)
def test_an_admin_that_cannot_answer_leaves_a_durable_registration_job(
    tmp_path: Path, reply: Reply
) -> None:
    admin = AdminModule(reply)

    async def scenario(world: World) -> list[object]:
        world.clock.now += 7
        with structlog.testing.capture_logs() as logs:
            state = await stored(world)
        return [state, await world.queued("registration"), [e["event"] for e in logs]]

    state, (job,), events = in_world(tmp_path, scenario, admin)
    assert state == "pending"
    assert isinstance(job, RegisterFile)
    assert msgspec.json.decode(msgspec.json.encode(job.registration)) == expected_registration()
    assert (job.node_id, job.node_url, job.upload_id) == ("se-1", "http://se-1:8010", "u-1")
    assert job.created_at == 1_767_323_052.0
    assert "registration_deferred" in events


def test_an_unreachable_token_endpoint_leaves_the_registration_pending(tmp_path: Path) -> None:
    admin = AdminModule()
    admin.down()

    async def scenario(world: World) -> list[object]:
        state = await stored(world)
        return [state, len(await world.queued("registration"))]

    assert in_world(tmp_path, scenario, admin) == ["pending", 1]
    assert admin.posted == []


def test_a_refused_token_is_renewed_once_and_the_registration_sent_again(tmp_path: Path) -> None:
    admin = AdminModule((401, {"detail": "Token has been revoked"}), (201, {}))

    async def scenario(world: World) -> str:
        return await stored(world)

    assert in_world(tmp_path, scenario, admin) == "registered"
    assert admin.tokens_issued == 2
    assert [auth for auth, _ in admin.posted] == ["Bearer t1", "Bearer t2"]


def test_a_token_refused_again_after_renewal_is_a_refusal_not_a_loop(tmp_path: Path) -> None:
    admin = AdminModule(
        (401, {"detail": "Not authenticated"}), (401, {"detail": "Not authenticated"})
    )

    async def scenario(world: World) -> None:
        with pytest.raises(RecordRefused, match="401"):
            await stored(world)

    in_world(tmp_path, scenario, admin)
    assert (admin.tokens_issued, len(admin.posted)) == (2, 2)


def test_a_registration_the_admin_refuses_is_refused_with_its_reason(tmp_path: Path) -> None:
    detail = [{"type": "value_error", "loc": ["body", "ttl_days"], "msg": "ttl_days too large"}]
    admin = AdminModule((422, {"detail": detail}))

    async def scenario(world: World) -> list[object]:
        with pytest.raises(RecordRefused) as refused:
            await stored(world)
        return [str(refused.value), await world.queued("registration")]

    message, queued = in_world(tmp_path, scenario, admin)
    assert "422" in message
    assert "ttl_days too large" in message
    assert queued == []  # a refusal is not retried


def test_a_400_other_than_already_exists_is_a_refusal(tmp_path: Path) -> None:
    admin = AdminModule((400, {"detail": "File size must be greater than 0"}))

    async def scenario(world: World) -> None:
        with pytest.raises(RecordRefused, match="greater than 0"):
            await stored(world)

    in_world(tmp_path, scenario, admin)


def test_with_admin_and_redis_down_the_registration_job_goes_to_the_journal(
    tmp_path: Path,
) -> None:
    admin = AdminModule((503, {}))

    async def scenario(world: World) -> list[object]:
        world.redis_down()
        state = await stored(world)
        return [state, [type(job) for job in world.journal.pending()]]

    assert in_world(tmp_path, scenario, admin) == ["pending", [RegisterFile]]


def test_with_admin_redis_and_journal_all_unavailable_the_record_is_unavailable(
    tmp_path: Path,
) -> None:
    admin = AdminModule((503, {}))

    async def scenario(world: World) -> None:
        world.redis_down()
        with pytest.raises(RecordUnavailable, match="No space left"):
            await stored(world)

    in_world(tmp_path, scenario, admin, journal=DiskFullJournal(tmp_path))


def test_the_recorder_registers_exactly_when_an_admin_is_configured(tmp_path: Path) -> None:
    async def registers(world: World) -> bool:
        return world.recorder.registers

    assert in_world(tmp_path, registers, AdminModule()) is True
    assert in_world(tmp_path, registers, None, announce=True) is False


@pytest.mark.parametrize(
    ("reply", "held"),
    [
        ((404, {"detail": "File not found"}), False),
        ((503, {}), False),
        (aiohttp.ClientConnectionError("refused"), False),
    ],
    ids=["404", "503", "no answer"],
)
def test_is_registered_is_false_when_the_registry_does_not_say_yes(
    tmp_path: Path, reply: Reply, held: bool
) -> None:
    admin = AdminModule()
    admin.answer_get(FILE_ID, reply)

    async def scenario(world: World) -> bool:
        return await world.recorder.is_registered(FILE_ID)

    assert in_world(tmp_path, scenario, admin) is held


def test_is_registered_when_the_registry_holds_the_record(tmp_path: Path) -> None:
    admin = AdminModule()
    now = "2026-01-02T03:04:05Z"
    record = {**expected_registration(), "created_at": now, "updated_at": now, "tags": []}
    admin.answer_get(FILE_ID, (200, record))

    async def scenario(world: World) -> bool:
        return await world.recorder.is_registered(FILE_ID)

    assert in_world(tmp_path, scenario, admin) is True
    assert in_world(tmp_path, scenario, None, announce=True) is False  # no registry to ask


# -- FileRecorder.stored without an Admin Module ---------------------------------------------


def test_without_admin_the_file_is_announced_in_artstores_format(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        state = await stored(world)
        return [state, await world.entries(), iso_utc(world.clock())]

    state, (entry,), now = in_world(tmp_path, scenario, None, announce=True)
    assert state == "not_configured"
    assert {k: v for k, v in entry.items() if k != "metadata"} == {
        "event_type": "file:created",
        "timestamp": now,
        "file_id": FILE_ID,
        "storage_element_id": "se-1",
    }
    announced = msgspec.json.decode(entry["metadata"], type=FileRecord)
    reg = registration_of(result(), request())
    assert {f: getattr(announced, f) for f in FileRegistration.__struct_fields__} == {
        f: getattr(reg, f) for f in FileRegistration.__struct_fields__
    }
    assert (announced.created_at, announced.updated_at, announced.tags) == (now, now, [])


def test_without_admin_and_with_redis_down_an_announcement_job_is_queued(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        world.redis_down()
        state = await stored(world)
        (job,) = world.journal.pending()
        world.redis_up()
        return [state, job, await world.entries()]

    state, job, entries = in_world(tmp_path, scenario, None, announce=True)
    assert (state, entries) == ("not_configured", [])
    assert isinstance(job, AnnounceFile)
    assert (job.event.event_type, job.event.file_id) == ("file:created", FILE_ID)


def test_a_queued_announcement_reaches_the_stream_once_redis_is_back(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        world.redis_down()
        await stored(world)
        world.redis_up()
        await world.outbox.work_once()
        await world.outbox.work_once()
        return [world.journal.pending(), [e["file_id"] for e in await world.entries()]]

    assert in_world(tmp_path, scenario, None, announce=True) == [[], [FILE_ID]]


def test_without_admin_redis_and_journal_all_unavailable_the_record_is_unavailable(
    tmp_path: Path,
) -> None:
    async def scenario(world: World) -> None:
        world.redis_down()
        with pytest.raises(RecordUnavailable):
            await stored(world)

    in_world(tmp_path, scenario, None, announce=True, journal=DiskFullJournal(tmp_path))


def test_with_neither_admin_nor_announcer_nothing_is_recorded(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        state = await stored(world)
        return [state, world.journal.pending(), await world.redis.keys("*")]

    assert in_world(tmp_path, scenario) == ["not_configured", [], []]


# -- the outbox's handlers -------------------------------------------------------------------


def registration_job() -> RegisterFile:
    return RegisterFile(
        id="job-1",
        registration=registration_of(result(), request()),
        node_id="se-1",
        node_url="http://se-1:8010",
        created_at=1000.0,
        upload_id="u-1",
    )


@pytest.mark.parametrize(
    "reply",
    [(201, {}), (400, {"detail": f"File with ID {FILE_ID} already exists"})],
    ids=["registered", "already registered"],
)
def test_a_registration_job_done_later_tells_who_waits_for_it(tmp_path: Path, reply: Reply) -> None:
    async def scenario(world: World) -> list[object]:
        done = await world.recorder.register_job(registration_job())
        return [done, world.registered]

    assert in_world(tmp_path, scenario, AdminModule(reply)) == [True, [FILE_ID]]


@pytest.mark.parametrize(
    "reply",
    [(503, {}), aiohttp.ClientConnectionError("refused")],
    ids=["503", "no answer"],
)
def test_a_registration_job_the_admin_cannot_take_yet_is_tried_again(
    tmp_path: Path, reply: Reply
) -> None:
    async def scenario(world: World) -> list[object]:
        done = await world.recorder.register_job(registration_job())
        return [done, world.registered, await world.queued("compensation")]

    assert in_world(tmp_path, scenario, AdminModule(reply)) == [False, [], []]


def test_a_registration_refused_later_owes_a_delete_of_the_copy_and_says_so(
    tmp_path: Path,
) -> None:
    """The client was told 201 (pending); the copy must not stay on an SE unknown to
    artStore."""
    admin = AdminModule((422, {"detail": "checksum_sha256: not hex"}))

    async def scenario(world: World) -> list[object]:
        with structlog.testing.capture_logs() as logs:
            done = await world.recorder.register_job(registration_job())
        return [done, world.registered, await world.queued("compensation"), logs]

    done, registered, (owed,), logs = in_world(tmp_path, scenario, admin)
    assert (done, registered) == (True, [])
    assert isinstance(owed, DeleteFile)
    assert (owed.node_id, owed.node_url, owed.file_id, owed.reason) == (
        "se-1",
        "http://se-1:8010",
        FILE_ID,
        "registration_refused",
    )
    (critical,) = [e for e in logs if e["log_level"] == "critical"]
    assert critical["event"] == "registration_refused_copy_removed"
    assert (critical["file_id"], critical["node"], critical["upload_id"]) == (
        FILE_ID,
        "se-1",
        "u-1",
    )
    assert "not hex" in critical["reason"]


def test_a_registration_job_without_an_admin_waits_for_one(tmp_path: Path) -> None:
    async def scenario(world: World) -> bool:
        return await world.recorder.register_job(registration_job())

    assert in_world(tmp_path, scenario) is False


def test_a_pending_registration_is_completed_by_the_outbox(tmp_path: Path) -> None:
    admin = AdminModule((503, {}))

    async def scenario(world: World) -> list[object]:
        state = await stored(world)
        await world.outbox.work_once()  # the Admin answers 201 now
        return [state, world.registered, await world.queued("registration")]

    assert in_world(tmp_path, scenario, admin) == ["pending", [FILE_ID], []]
    assert [body for _, body in admin.posted] == [expected_registration()] * 2


def announcement_job() -> AnnounceFile:
    now = "2026-01-02T03:04:05.000Z"
    reg = registration_of(result(), request())
    record = FileRecord(**msgspec.structs.asdict(reg), created_at=now, updated_at=now)
    event: FileEvent = created_event(record, now)
    return AnnounceFile(id="job-2", event=event, created_at=1000.0)


def test_an_announcement_job_delivers_the_event_once(tmp_path: Path) -> None:
    async def scenario(world: World) -> list[object]:
        first = await world.recorder.announce_job(announcement_job())
        again = await world.recorder.announce_job(announcement_job())  # a retried job
        return [first, again, [e["file_id"] for e in await world.entries()]]

    assert in_world(tmp_path, scenario, None, announce=True) == [True, True, [FILE_ID]]


def test_an_announcement_job_is_tried_again_while_redis_is_down(tmp_path: Path) -> None:
    async def scenario(world: World) -> bool:
        world.redis_down()
        return await world.recorder.announce_job(announcement_job())

    assert in_world(tmp_path, scenario, None, announce=True) is False


def test_an_announcement_job_with_nowhere_to_announce_is_kept(tmp_path: Path) -> None:
    async def scenario(world: World) -> bool:
        return await world.recorder.announce_job(announcement_job())

    assert in_world(tmp_path, scenario) is False


def test_an_announcement_job_left_from_before_an_admin_module_registers_the_file(
    tmp_path: Path,
) -> None:
    """An Admin Module is configured since: it announces what it registers, so the
    waiting announcement becomes a registration of the same record."""
    admin = AdminModule()

    async def scenario(world: World) -> bool:
        return await world.recorder.announce_job(announcement_job())

    assert in_world(tmp_path, scenario, admin) is True
    ((_, body),) = admin.posted
    assert body == expected_registration()
