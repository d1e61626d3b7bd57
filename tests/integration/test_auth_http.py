"""Authentication through the real gateway, on both upload routes.

A recording proxy sits between the gateway and the real reference SE, so "the SE
received nothing" is observed on the wire, not inferred from the SE's disk alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jose import jwt

from ingester_gateway.reference.processes import ServerProcess, gateway, running, storage_element
from tests.faults import StorageElementProxy
from tests.kit import (
    Answer,
    DevKeys,
    assert_error_envelope,
    curl,
    multipart_form,
    post_form,
    put,
)
from tests.stack import Stack

BODY = b"not for the storage element " * 64


@dataclass
class AuthStack:
    stack: Stack  # SE + gateway with the default minimum role (user)
    operator_gw: ServerProcess  # same SE, INGESTER_AUTH_UPLOAD_ROLES without user
    proxy: StorageElementProxy


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[AuthStack]:
    workdir = tmp_path_factory.mktemp("auth")
    data_dir = workdir / "se-1-data"
    se = storage_element(workdir, keys.public_path, data_dir=data_dir)
    with running(se), StorageElementProxy(se.url) as proxy:
        entry = [{"id": "se-1", "url": proxy.url, "mode": "rw", "priority": 100}]
        gw = gateway(workdir, keys.public_path, entry)
        operator_gw = gateway(
            workdir,
            keys.public_path,
            entry,
            env={"INGESTER_AUTH_UPLOAD_ROLES": "super_admin,admin,operator"},
            name="gateway-operator",
        )
        with running(gw, operator_gw):
            yield AuthStack(Stack(se, gw, keys, data_dir), operator_gw, proxy)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def admin_claims(role: str = "user") -> dict[str, object]:
    now = int(time.time())
    return {
        "sub": "mallory",
        "type": "admin_user",
        "role": role,
        "name": "mallory",
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }


def unsigned_token() -> str:
    """`alg: none`: valid claims, empty signature."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(admin_claims('admin')).encode())}."


def hs256_with_public_key(public_pem: bytes) -> str:
    """Key confusion: HS256 with the verifier's own PEM public key as the HMAC secret."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(admin_claims("admin")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def rs384_token(keys: DevKeys) -> str:
    """Signed by the trusted key, but with an algorithm outside the pinned list."""
    return str(jwt.encode(admin_claims("admin"), keys.private_pem.decode(), algorithm="RS384"))


# name -> Authorization header value (None: no header), from (keys, other_keys)
Credential = Callable[[DevKeys, DevKeys], str | None]
UNAUTHORIZED: dict[str, Credential] = {
    "missing": lambda k, o: None,
    "empty_bearer": lambda k, o: "Bearer ",
    "not_a_jwt": lambda k, o: "Bearer not-a-jwt",
    "garbage_segments": lambda k, o: "Bearer e30.e30.AAAA",
    "basic_scheme": lambda k, o: "Basic " + base64.b64encode(b"alice:secret").decode(),
    "expired": lambda k, o: "Bearer " + k.token(now=int(time.time()) - 7200, ttl=3600),
    "not_yet_valid": lambda k, o: "Bearer " + k.token(now=int(time.time()) + 3600),
    "signed_by_another_key": lambda k, o: "Bearer " + o.token(role="admin"),
    "alg_none": lambda k, o: "Bearer " + unsigned_token(),
    "hs256_public_key_secret": lambda k, o: (
        "Bearer " + hs256_with_public_key(k.public_path.read_bytes())
    ),
    "refresh_token": lambda k, o: "Bearer " + k.token(role="admin", token_type="refresh"),
    "rs384_by_the_right_key": lambda k, o: "Bearer " + rs384_token(k),
    "oversized": lambda k, o: "Bearer " + k.token(extra={"pad": "x" * 9000}),
}
FORBIDDEN: dict[str, Credential] = {
    "unknown_role": lambda k, o: "Bearer " + k.token(role="superuser"),
    "no_role": lambda k, o: "Bearer " + k.token(role="user", extra={"role": None}),
}
ROUTES = ("put", "multipart")


def upload(gw: ServerProcess, route: str, authorization: str | None, data: bytes = BODY) -> Answer:
    headers = {"X-Request-ID": f"auth-{uuid.uuid4().hex[:12]}"}
    auth = {} if authorization is None else {"Authorization": authorization}
    if route == "put":
        return put(gw, auth, data, "x.bin", headers=headers)
    body, content_type = multipart_form({"description": "auth test"}, data)
    return post_form(gw, auth, body, content_type, headers)


def assert_refused_before_storage(
    env: AuthStack, answer: Answer, status: int, uploads_before: int, stored_before: list[str]
) -> None:
    error = assert_error_envelope(answer, status)
    assert error["request_id"].startswith("auth-")
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert len(env.proxy.uploads()) == uploads_before, "the SE received an upload request"
    assert env.stack.stored_ids() == stored_before
    assert env.stack.partials() == []


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(UNAUTHORIZED))
def test_invalid_token_is_401_with_challenge_and_nothing_reaches_the_se(
    auth_stack: AuthStack, keys: DevKeys, other_keys: DevKeys, case: str, route: str
) -> None:
    uploads_before = len(auth_stack.proxy.uploads())
    stored_before = auth_stack.stack.stored_ids()
    answer = upload(auth_stack.stack.gw, route, UNAUTHORIZED[case](keys, other_keys))
    assert_refused_before_storage(auth_stack, answer, 401, uploads_before, stored_before)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(FORBIDDEN))
def test_unknown_or_missing_role_is_403_and_nothing_reaches_the_se(
    auth_stack: AuthStack, keys: DevKeys, other_keys: DevKeys, case: str, route: str
) -> None:
    uploads_before = len(auth_stack.proxy.uploads())
    stored_before = auth_stack.stack.stored_ids()
    answer = upload(auth_stack.stack.gw, route, FORBIDDEN[case](keys, other_keys))
    assert_refused_before_storage(auth_stack, answer, 403, uploads_before, stored_before)


@pytest.mark.parametrize("route", ROUTES)
def test_a_role_outside_the_configured_set_is_403_and_nothing_reaches_the_se(
    auth_stack: AuthStack, keys: DevKeys, route: str
) -> None:
    uploads_before = len(auth_stack.proxy.uploads())
    stored_before = auth_stack.stack.stored_ids()
    answer = upload(auth_stack.operator_gw, route, "Bearer " + keys.token(role="user"))
    assert_refused_before_storage(auth_stack, answer, 403, uploads_before, stored_before)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("role", ["readonly", "auditor"])
def test_readonly_and_auditor_tokens_are_403_and_nothing_reaches_the_se(
    auth_stack: AuthStack, keys: DevKeys, route: str, role: str
) -> None:
    uploads_before = len(auth_stack.proxy.uploads())
    stored_before = auth_stack.stack.stored_ids()
    answer = upload(auth_stack.stack.gw, route, "Bearer " + keys.token(role=role))
    assert_refused_before_storage(auth_stack, answer, 403, uploads_before, stored_before)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("role", "use_operator_gateway"),
    [("user", False), ("super_admin", False), ("operator", True), ("admin", True)],
)
def test_valid_token_with_enough_role_uploads_through_the_proxy(
    auth_stack: AuthStack, keys: DevKeys, role: str, use_operator_gateway: bool, route: str
) -> None:
    """The control case: the same requests with a good token do reach the SE, so the
    refusals above are the gateway's doing and the proxy does see uploads."""
    uploads_before = len(auth_stack.proxy.uploads())
    gw = auth_stack.operator_gw if use_operator_gateway else auth_stack.stack.gw
    answer = upload(gw, route, "Bearer " + keys.token(role=role))
    assert answer.status == 201, answer.body
    assert len(auth_stack.proxy.uploads()) == uploads_before + 1
    assert answer.json()["file_id"] in auth_stack.stack.stored_ids()


def curl_upload(
    url: str, route: str, path: Path, authorization: str | None
) -> tuple[int, int, float]:
    """curl with `Expect: 100-continue` (and 10 s patience for the 100): its status,
    the body bytes it uploaded, and the seconds it took."""
    args = ["--expect100-timeout", "10", "-H", "Expect: 100-continue"]
    if authorization is not None:
        args += ["-H", f"Authorization: {authorization}"]
    if route == "put":
        args += ["-T", str(path), f"{url}/api/v1/files/big.bin"]
    else:
        args += ["-F", f"file=@{path}", f"{url}/api/v1/files/upload"]
    started = time.monotonic()
    answer = curl(*args, timeout=60)
    return answer.status, answer.uploaded, time.monotonic() - started


@pytest.fixture(scope="module")
def fifty_mib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("curl") / "big.bin"
    with path.open("wb") as fh:
        fh.truncate(50 * 2**20)
    return path


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", ["missing", "expired", "signed_by_another_key"])
def test_expect_continue_client_without_valid_token_uploads_no_body_byte(
    auth_stack: AuthStack,
    keys: DevKeys,
    other_keys: DevKeys,
    fifty_mib: Path,
    case: str,
    route: str,
) -> None:
    """Auth is decided before the first `receive()`, so uvicorn never sends
    `100 Continue`: curl gets the 401 while still waiting and sends none of the 50 MiB."""
    uploads_before = len(auth_stack.proxy.uploads())
    code, uploaded, seconds = curl_upload(
        auth_stack.stack.gw.url, route, fifty_mib, UNAUTHORIZED[case](keys, other_keys)
    )
    assert (code, uploaded) == (401, 0)
    assert seconds < 5, "curl waited for its expect100 timeout: the 401 came late"
    assert len(auth_stack.proxy.uploads()) == uploads_before
