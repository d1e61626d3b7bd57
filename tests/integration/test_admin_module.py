"""The reference Admin Module (`ingester-gateway admin-module`) as a real process on
loopback, with and without a real redis-server: its tokens verify with the gateway's
verifier, the file registry answers BRIEF's contract (statuses and bodies), each change
is announced on `file-events` in the Query Module's format, records survive a restart,
and the storage-elements document lists a real reference SE the gateway can parse."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from jose import jwt

from ingester_gateway.auth.credentials import ServiceAccount
from ingester_gateway.auth.verify import JwksKeySource, StaticKeySource, TokenVerifier
from ingester_gateway.reference.processes import (
    ADMIN_USER,
    SERVICE_CLIENT,
    ServerProcess,
    admin_module,
    redis_server,
    running,
    storage_element,
)
from ingester_gateway.registry.artstore import CHANNEL, DOCUMENT_KEY, parse_document
from tests.kit import RECORD_KEYS, Answer, DevKeys, eventually, http_call, log_events, run
from tests.stack import redis_url

STREAM_FIELDS = ["event_type", "timestamp", "file_id", "storage_element_id", "metadata"]
# Beside the defaults (SERVICE_CLIENT admin, ADMIN_USER super_admin).
EXTRA_ACCOUNTS = [
    "--service-account",
    "uploader:up-secret:user:7",
    "--service-account",
    "reader:ro-secret:readonly",
    "--admin-user",
    "ops:ops-password:admin",
]


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(redis_server(tmp_path_factory.mktemp("admin-redis"))) as (server,):
        yield server


@pytest.fixture(scope="module")
def admin(
    tmp_path_factory: pytest.TempPathFactory, keys: DevKeys, redis_proc: ServerProcess
) -> Iterator[ServerProcess]:
    """An Admin Module announcing to `redis_proc`, shared by the tests of this module."""
    workdir = tmp_path_factory.mktemp("admin")
    module = admin_module(
        workdir, keys.private_path, redis_url=redis_url(redis_proc), extra=EXTRA_ACCOUNTS
    )
    with running(module):
        yield module


def redis_of(server: ServerProcess) -> redis.Redis:
    return redis.Redis(port=server.port, decode_responses=True)


def call(
    module: ServerProcess,
    method: str,
    path: str,
    payload: object = None,
    token: str | None = None,
) -> Answer:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = None if payload is None else json.dumps(payload).encode()
    return http_call(module.url, method, path, body, headers)


def service_token(module: ServerProcess, client: tuple[str, str] = SERVICE_CLIENT) -> str:
    answer = call(
        module,
        "POST",
        "/api/v1/auth/token",
        {"grant_type": "client_credentials", "client_id": client[0], "client_secret": client[1]},
    )
    assert answer.status == 200, answer.body
    return str(answer.json()["access_token"])


def login_token(module: ServerProcess, user: tuple[str, str] = ADMIN_USER) -> str:
    answer = call(module, "POST", "/api/v1/auth/login", {"username": user[0], "password": user[1]})
    assert answer.status == 200, answer.body
    return str(answer.json()["access_token"])


def registration(**changes: Any) -> dict[str, Any]:
    """A valid temporary registration of a fresh file id, with `changes`; `drop=` leaves
    fields out."""
    drop = changes.pop("drop", ())
    file_id = str(uuid.uuid4())
    body: dict[str, Any] = {
        "file_id": file_id,
        "original_filename": "report.pdf",
        "storage_filename": "report.pdf",
        "file_size": 1234,
        "checksum_sha256": "ab" * 32,
        "content_type": "application/pdf",
        "description": "q3 numbers",
        "retention_policy": "temporary",
        "ttl_expires_at": "2026-02-01T00:00:00Z",
        "ttl_days": 30,
        "storage_element_id": "se-edit-1",
        "storage_path": f"/files/{file_id}",
        "compressed": True,
        "compression_algorithm": "zstd",
        "original_size": 5000,
        "uploaded_by": "alice",
        "upload_source_ip": "10.0.0.7",
        "user_metadata": {"team": "finance"},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if k not in drop}


def events_of(server: ServerProcess, file_id: str) -> list[dict[str, str]]:
    entries = redis_of(server).xrange("file-events")
    return [fields for _, fields in entries if fields.get("file_id") == file_id]


# -- tokens -----------------------------------------------------------------------------


def test_client_credentials_give_a_service_account_token_the_gateway_verifies(
    admin: ServerProcess, keys: DevKeys
) -> None:
    answer = call(
        admin,
        "POST",
        "/api/v1/auth/token",
        {"grant_type": "client_credentials", "client_id": "uploader", "client_secret": "up-secret"},
    )
    assert answer.status == 200
    reply = answer.json()
    assert reply["token_type"] == "bearer" and reply["expires_in"] == 3600
    token = reply["access_token"]

    verifier = TokenVerifier(StaticKeySource.from_file(str(keys.public_path)))
    principal = run(verifier.verify(token))
    assert (principal.sub, principal.role, principal.token_type, principal.client_id) == (
        "uploader",
        "user",
        "service_account",
        "uploader",
    )
    claims = jwt.get_unverified_claims(token)
    assert sorted(claims) == sorted(
        ["sub", "type", "role", "client_id", "rate_limit", "name", "jti", "iat", "nbf", "exp"]
    )
    assert claims["rate_limit"] == 7 and claims["name"] == "uploader"
    assert all(type(claims[k]) is int for k in ("iat", "nbf", "exp"))
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "dev", "typ": "JWT"}

    async def through_jwks() -> str:
        async with aiohttp.ClientSession() as session:
            source = JwksKeySource(f"{admin.url}/.well-known/jwks.json", lambda: session)
            return (await TokenVerifier(source).verify(token)).sub

    assert run(through_jwks()) == "uploader"


def test_the_gateways_service_account_client_takes_its_token_here(
    admin: ServerProcess, keys: DevKeys
) -> None:
    async def fetch() -> str:
        async with aiohttp.ClientSession() as session:
            url = f"{admin.url}/api/v1/auth/token"
            return await ServiceAccount(url, *SERVICE_CLIENT, lambda: session).token()

    verifier = TokenVerifier(StaticKeySource.from_file(str(keys.public_path)))
    principal = run(verifier.verify(run(fetch())))
    assert (principal.token_type, principal.client_id) == ("service_account", SERVICE_CLIENT[0])


def test_login_gives_an_admin_user_token_with_the_users_role(
    admin: ServerProcess, keys: DevKeys
) -> None:
    verifier = TokenVerifier(StaticKeySource.from_file(str(keys.public_path)))
    token = login_token(admin)
    principal = run(verifier.verify(token))
    assert (principal.sub, principal.role, principal.token_type, principal.name) == (
        "admin",
        "super_admin",
        "admin_user",
        "admin",
    )
    claims = jwt.get_unverified_claims(token)
    assert sorted(claims) == sorted(["sub", "type", "role", "name", "jti", "iat", "nbf", "exp"])
    assert all(type(claims[k]) is int for k in ("iat", "nbf", "exp"))

    ops = run(verifier.verify(login_token(admin, ("ops", "ops-password"))))
    assert (ops.sub, ops.role, ops.token_type) == ("ops", "admin", "admin_user")


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        (
            "/api/v1/auth/token",
            {"grant_type": "client_credentials", "client_id": "ingester", "client_secret": "no"},
        ),
        (
            "/api/v1/auth/token",
            {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"},
        ),
        ("/api/v1/auth/login", {"username": "admin", "password": "wrong"}),
        ("/api/v1/auth/login", {"username": "nobody", "password": "x"}),
    ],
)
def test_wrong_credentials_are_401_with_a_detail(
    admin: ServerProcess, path: str, payload: dict[str, str]
) -> None:
    answer = call(admin, "POST", path, payload)
    assert answer.status == 401
    assert isinstance(answer.json()["detail"], str)
    assert answer.headers["www-authenticate"] == "Bearer"


def test_a_token_request_of_another_grant_is_422(admin: ServerProcess) -> None:
    payload = {"grant_type": "password", "client_id": "ingester", "client_secret": "x"}
    answer = call(admin, "POST", "/api/v1/auth/token", payload)
    assert answer.status == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "grant_type"]


# -- the file registry --------------------------------------------------------------------


def test_a_registered_file_reads_back_as_stored(admin: ServerProcess) -> None:
    token = service_token(admin)
    body = registration(checksum_sha256="AB" * 32)
    created = call(admin, "POST", "/api/v1/files", body, token)
    assert created.status == 201, created.body
    record = created.json()
    assert list(record) == RECORD_KEYS
    assert record["checksum_sha256"] == "ab" * 32
    assert record["created_at"] == record["updated_at"] and record["tags"] == []
    assert {k: record[k] for k in body if k != "checksum_sha256"} == {
        k: v for k, v in body.items() if k != "checksum_sha256"
    }
    # any valid token reads, an admin user's super_admin one too
    got = call(admin, "GET", f"/api/v1/files/{body['file_id']}", token=login_token(admin))
    assert got.status == 200 and got.json() == record


def test_an_existing_file_id_is_400_even_for_an_identical_body(
    admin: ServerProcess, redis_proc: ServerProcess
) -> None:
    token = service_token(admin)
    body = registration()
    assert call(admin, "POST", "/api/v1/files", body, token).status == 201
    again = call(admin, "POST", "/api/v1/files", body, token)
    assert again.status == 400
    assert again.json() == {"detail": f"File with ID {body['file_id']} already exists"}
    assert len(events_of(redis_proc, body["file_id"])) == 1


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"drop": ("ttl_days", "ttl_expires_at")}, ["body"]),  # temporary without ttl
        ({"retention_policy": "permanent"}, ["body"]),  # permanent with ttl
        ({"ttl_days": 366}, ["body", "ttl_days"]),
        ({"checksum_sha256": "xyz"}, ["body", "checksum_sha256"]),
        ({"checksum_sha256": "g" * 64}, ["body", "checksum_sha256"]),
        ({"file_id": "not-a-uuid"}, ["body", "file_id"]),
        ({"drop": ("content_type",)}, ["body", "content_type"]),
        ({"content_type": None}, ["body", "content_type"]),
        ({"uploaded_by": None}, ["body", "uploaded_by"]),
        ({"original_filename": "x" * 501}, ["body", "original_filename"]),
    ],
)
def test_each_broken_rule_is_422_naming_where(
    admin: ServerProcess, changes: dict[str, Any], loc: list[str]
) -> None:
    body = registration(**changes)
    answer = call(admin, "POST", "/api/v1/files", body, service_token(admin))
    assert answer.status == 422, answer.body
    [error] = answer.json()["detail"]
    assert error["loc"] == loc and error["msg"] and error["type"]


def test_a_zero_byte_file_is_registered_and_announced(
    admin: ServerProcess, redis_proc: ServerProcess
) -> None:
    body = registration(file_size=0, original_size=0)
    answer = call(admin, "POST", "/api/v1/files", body, service_token(admin))
    assert answer.status == 201 and answer.json()["file_size"] == 0
    [event] = events_of(redis_proc, body["file_id"])
    assert json.loads(event["metadata"])["file_size"] == 0


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("nobody", 401),
        ("forged", 401),
        ("super_admin", 403),
        ("admin_user_admin", 403),
        ("readonly_account", 403),
        ("user_account", 201),
    ],
)
def test_only_a_service_account_with_admin_or_user_role_registers(
    admin: ServerProcess, other_keys: DevKeys, who: str, status: int
) -> None:
    token = {
        "nobody": None,
        "forged": other_keys.token(sub="ingester", role="admin", token_type="service_account"),
        "super_admin": login_token(admin),
        "admin_user_admin": login_token(admin, ("ops", "ops-password")),
        "readonly_account": service_token(admin, ("reader", "ro-secret")),
        "user_account": service_token(admin, ("uploader", "up-secret")),
    }[who]
    answer = call(admin, "POST", "/api/v1/files", registration(), token)
    assert answer.status == status, answer.body
    if status != 201:
        assert isinstance(answer.json()["detail"], str)


def test_a_readonly_account_reads_and_an_unknown_role_is_refused(
    admin: ServerProcess, keys: DevKeys
) -> None:
    body = registration()
    assert call(admin, "POST", "/api/v1/files", body, service_token(admin)).status == 201
    path = f"/api/v1/files/{body['file_id']}"
    reader = service_token(admin, ("reader", "ro-secret"))
    assert call(admin, "GET", path, token=reader).status == 200
    assert call(admin, "PUT", path, {"description": "x"}, reader).status == 403
    assert call(admin, "DELETE", path, token=reader).status == 403
    stranger = keys.token(sub="ingester", role="root", token_type="service_account")
    answer = call(admin, "GET", path, token=stranger)
    assert answer.status == 403 and "unknown role" in answer.json()["detail"]


def test_an_unknown_file_is_404_and_a_malformed_id_422(admin: ServerProcess) -> None:
    token = service_token(admin)
    missing = call(admin, "GET", f"/api/v1/files/{uuid.uuid4()}", token=token)
    assert (missing.status, missing.json()) == (404, {"detail": "File not found"})
    assert call(admin, "PUT", f"/api/v1/files/{uuid.uuid4()}", {}, token).status == 404
    assert call(admin, "DELETE", f"/api/v1/files/{uuid.uuid4()}", token=token).status == 404
    malformed = call(admin, "GET", "/api/v1/files/abc", token=token)
    assert malformed.status == 422
    assert malformed.json()["detail"][0]["loc"] == ["path", "file_id"]


def test_finalize_makes_the_file_permanent_clears_its_ttl_and_announces_an_update(
    admin: ServerProcess, redis_proc: ServerProcess
) -> None:
    token = service_token(admin)
    body = registration()
    created = call(admin, "POST", "/api/v1/files", body, token).json()
    change = {
        "retention_policy": "permanent",
        "ttl_days": None,
        "ttl_expires_at": None,
        "storage_element_id": "se-rw-1",
        "storage_path": f"/files/{body['file_id']}",
    }
    answer = call(admin, "PUT", f"/api/v1/files/{body['file_id']}", change, token)
    assert answer.status == 200, answer.body
    record = answer.json()
    assert (record["retention_policy"], record["ttl_days"], record["ttl_expires_at"]) == (
        "permanent",
        None,
        None,
    )
    assert record["storage_element_id"] == "se-rw-1"
    assert record["created_at"] == created["created_at"]
    assert record["updated_at"] > created["updated_at"]

    created_event, updated_event = events_of(redis_proc, body["file_id"])
    assert [created_event["event_type"], updated_event["event_type"]] == [
        "file:created",
        "file:updated",
    ]
    assert updated_event["storage_element_id"] == "se-rw-1"
    assert json.loads(updated_event["metadata"]) == record


def test_an_update_that_breaks_the_retention_rule_is_422_and_changes_nothing(
    admin: ServerProcess, redis_proc: ServerProcess
) -> None:
    token = service_token(admin)
    body = registration()
    created = call(admin, "POST", "/api/v1/files", body, token).json()
    path = f"/api/v1/files/{body['file_id']}"
    answer = call(admin, "PUT", path, {"retention_policy": "permanent"}, token)
    assert answer.status == 422
    assert answer.json()["detail"][0]["loc"] == ["body"]
    assert call(admin, "GET", path, token=token).json() == created
    assert [e["event_type"] for e in events_of(redis_proc, body["file_id"])] == ["file:created"]


def test_delete_needs_an_admin_service_account_and_announces_file_deleted(
    admin: ServerProcess, redis_proc: ServerProcess
) -> None:
    token = service_token(admin)
    body = registration()
    created = call(admin, "POST", "/api/v1/files", body, token).json()
    path = f"/api/v1/files/{body['file_id']}"
    user_token = service_token(admin, ("uploader", "up-secret"))
    assert call(admin, "DELETE", path, token=user_token).status == 403

    answer = call(admin, "DELETE", path + "?deletion_reason=gc_cleanup", token=token)
    assert answer.status == 200, answer.body
    assert answer.json()["deletion_reason"] == "gc_cleanup"
    assert call(admin, "GET", path, token=token).status == 404
    again = call(admin, "DELETE", path, token=token)  # a retry answers the first deletion
    assert again.status == 200 and again.json() == answer.json()

    events = events_of(redis_proc, body["file_id"])
    assert [e["event_type"] for e in events] == ["file:created", "file:deleted"]
    assert json.loads(events[1]["metadata"]) == created


def test_each_event_carries_exactly_the_query_modules_fields(
    admin: ServerProcess, redis_proc: ServerProcess
) -> None:
    token = service_token(admin)
    body = registration()
    record = call(admin, "POST", "/api/v1/files", body, token).json()
    [event] = events_of(redis_proc, body["file_id"])
    assert list(event) == STREAM_FIELDS
    assert event["event_type"] == "file:created"
    assert event["file_id"] == body["file_id"]
    assert event["storage_element_id"] == "se-edit-1"
    assert event["timestamp"].endswith("Z") and "T" in event["timestamp"]
    metadata = json.loads(event["metadata"])
    assert list(metadata) == RECORD_KEYS
    assert metadata == record and metadata["tags"] == []


def test_the_list_pages_through_records_in_registration_order(admin: ServerProcess) -> None:
    token = service_token(admin)
    ids = []
    for _ in range(3):
        ids.append(call(admin, "POST", "/api/v1/files", registration(), token).json()["file_id"])
    total = call(admin, "GET", "/api/v1/files?limit=1", token=token).json()["total"]
    tail = call(admin, "GET", f"/api/v1/files?limit=2&offset={total - 2}", token=token).json()
    assert [r["file_id"] for r in tail["files"]] == ids[1:]
    assert (tail["limit"], tail["offset"], tail["total"]) == (2, total - 2, total)
    assert call(admin, "GET", "/api/v1/files?limit=0", token=token).status == 422
    assert call(admin, "GET", "/api/v1/files").status == 401


# -- process life ------------------------------------------------------------------------


def test_records_survive_a_restart_and_without_redis_nothing_is_announced(
    tmp_path: Path, keys: DevKeys
) -> None:
    db = tmp_path / "registry.db"
    first = admin_module(tmp_path, keys.private_path, db=db)
    with running(first):
        token = service_token(first)
        body = registration()
        record = call(first, "POST", "/api/v1/files", body, token).json()
    assert len(log_events(first, "announcements_disabled")) == 1
    assert "file_event" not in first.log_path.read_text()

    second = admin_module(tmp_path, keys.private_path, db=db)
    with running(second):
        token = service_token(second)  # same key: the first one's token is as good
        got = call(second, "GET", f"/api/v1/files/{body['file_id']}", token=token)
        assert got.status == 200 and got.json() == record
        again = call(second, "POST", "/api/v1/files", body, token)
        assert again.status == 400


def test_with_redis_down_the_registry_answers_and_the_lost_event_is_logged(
    tmp_path: Path, keys: DevKeys
) -> None:
    server = redis_server(tmp_path)
    with running(server):
        module = admin_module(tmp_path, keys.private_path, redis_url=redis_url(server))
        with running(module):
            token = service_token(module)
            server.stop()
            body = registration()
            started = time.monotonic()
            answer = call(module, "POST", "/api/v1/files", body, token)
            assert answer.status == 201
            assert time.monotonic() - started < 5
            got = call(module, "GET", f"/api/v1/files/{body['file_id']}", token=token)
            assert got.status == 200
            lost = log_events(module, "file_event_lost")
    assert [(e["event_type"], e["file_id"], e["level"]) for e in lost] == [
        ("file:created", body["file_id"], "error")
    ]


def test_the_storage_elements_document_follows_a_real_se(tmp_path: Path, keys: DevKeys) -> None:
    server = redis_server(tmp_path)
    se = storage_element(tmp_path, keys.public_path, element_id="se-edit-7", mode="edit")
    with running(server, se):
        client = redis_of(server)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL)
        module = admin_module(
            tmp_path,
            keys.private_path,
            redis_url=redis_url(server),
            storage_elements=[se],
            poll_interval=0.3,
        )
        with running(module):

            def document(status: str) -> dict[str, Any] | None:
                raw = client.get(DOCUMENT_KEY)
                if raw is None:
                    return None
                doc: dict[str, Any] = json.loads(raw)
                return doc if doc["storage_elements"][0]["status"] == status else None

            online = eventually(lambda: document("online"), 10, "the SE listed online")
            assert set(online) == {"version", "timestamp", "count", "storage_elements"}
            assert online["count"] == 1
            [entry] = online["storage_elements"]
            assert entry["element_id"] == "se-edit-7" and entry["name"] == "se-edit-7"
            assert (entry["mode"], entry["storage_type"], entry["api_url"]) == (
                "edit",
                "local",
                se.url,
            )
            assert entry["is_writable"] and entry["is_available"]
            assert isinstance(entry["id"], int) and entry["capacity_bytes"] > 0
            [record] = parse_document(json.dumps(online).encode())
            assert (record.url, record.mode, record.status) == (se.url, "edit", "ok")

            se.stop()
            offline = eventually(lambda: document("offline"), 10, "the SE listed offline")
            [gone] = offline["storage_elements"]
            assert offline["version"] > online["version"]
            assert gone["id"] == entry["id"] and gone["element_id"] == "se-edit-7"
            assert not gone["is_writable"] and not gone["is_available"]
            [down] = parse_document(json.dumps(offline).encode())
            assert down.status == "down"

            notices = []
            quiet_until = time.monotonic() + 1.0  # the subscribe reply reads as None too
            while time.monotonic() < quiet_until:
                if (message := pubsub.get_message(timeout=0.2)) is not None:
                    notices.append(json.loads(message["data"]))
            # one notice per change, none for the rounds that changed nothing
            assert [n["version"] for n in notices] == list(range(1, offline["version"] + 1))
            assert all(n["event"] == "storage_element_config_updated" for n in notices)
        pubsub.close()
