"""Service-account credentials against the reference token service (a real process),
and JWKS verification end to end through a gateway."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from ingester_gateway.auth.credentials import CredentialError, ServiceAccount, UpstreamCredentials
from ingester_gateway.auth.verify import JwksKeySource, Principal, StaticKeySource, TokenVerifier
from ingester_gateway.reference.processes import (
    SERVICE_CLIENT,
    ServerProcess,
    admin_module,
    gateway,
    running,
    se_entry,
    storage_element,
)
from tests.kit import DevKeys, FakeClock, http_call


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory, keys: DevKeys) -> Iterator[ServerProcess]:
    with running(admin_module(tmp_path_factory.mktemp("tokens"), keys.private_path)) as (ts,):
        yield ts


T = TypeVar("T")


async def _with_session(body: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    async with aiohttp.ClientSession() as session:
        return await body(session)


def test_service_account_token_is_a_verified_service_account_and_is_reused(
    tokens: ServerProcess, keys: DevKeys
) -> None:
    clock = FakeClock()

    async def body(session: aiohttp.ClientSession) -> tuple[str, str, str]:
        account = ServiceAccount(
            f"{tokens.url}/api/v1/auth/token", *SERVICE_CLIENT, lambda: session, clock=clock
        )
        first = await account.token()
        clock.advance(60)  # well inside the 3600 s lifetime: the cached token is reused
        second = await account.token()
        clock.advance(3000)  # past 80 % of the lifetime: renewed
        third = await account.token()
        return first, second, third

    first, second, third = asyncio.run(_with_session(body))
    assert first == second
    assert third != first
    verifier = TokenVerifier(StaticKeySource.from_file(str(keys.public_path)), roles=["admin"])
    principal = asyncio.run(verifier.verify(third))
    assert principal.token_type == "service_account"
    assert principal.sub == SERVICE_CLIENT[0]
    assert principal.client_id == SERVICE_CLIENT[0]


def test_concurrent_callers_share_one_token_request(tokens: ServerProcess) -> None:
    async def body(session: aiohttp.ClientSession) -> set[str]:
        account = ServiceAccount(
            f"{tokens.url}/api/v1/auth/token", *SERVICE_CLIENT, lambda: session
        )
        return set(await asyncio.gather(*(account.token() for _ in range(20))))

    assert len(asyncio.run(_with_session(body))) == 1


@pytest.mark.parametrize(
    ("client_id", "secret", "path"),
    [
        ("ingester", "wrong-secret", "/api/v1/auth/token"),
        ("nobody", "test-secret", "/api/v1/auth/token"),
        ("ingester", "test-secret", "/api/v1/auth/nothing-here"),
    ],
)
def test_refused_client_credentials_raise_credential_error(
    tokens: ServerProcess, client_id: str, secret: str, path: str
) -> None:
    async def body(session: aiohttp.ClientSession) -> None:
        await ServiceAccount(tokens.url + path, client_id, secret, lambda: session).token()

    with pytest.raises(CredentialError):
        asyncio.run(_with_session(body))


def test_unreachable_token_endpoint_falls_back_to_the_clients_token_for_deletes() -> None:
    async def body(session: aiohttp.ClientSession) -> dict[str, str]:
        account = ServiceAccount("http://127.0.0.1:9/api/v1/auth/token", "a", "b", lambda: session)
        principal = _principal("user-token")
        return await UpstreamCredentials(account, forward=True).for_delete(principal)

    assert asyncio.run(_with_session(body)) == {"Authorization": "Bearer user-token"}


def test_token_endpoint_refuses_other_grants_and_bad_bodies(tokens: ServerProcess) -> None:
    url = "/api/v1/auth/token"
    bad_grant = json.dumps({"grant_type": "password", "client_id": "a", "client_secret": "b"})
    answer = http_call(tokens.url, "POST", url, bad_grant.encode(), {})
    assert answer.status == 422  # FastAPI's answer to a body it cannot take
    assert http_call(tokens.url, "POST", url, b"not json", {}).status == 422
    assert http_call(tokens.url, "POST", url, b"x" * ((1 << 20) + 1), {}).status == 413


def test_gateway_verifies_tokens_against_the_jwks_url(
    tmp_path: Path, keys: DevKeys, tokens: ServerProcess
) -> None:
    """INGESTER_AUTH_JWKS_URL instead of a key file: keys come from the JWKS document by
    `kid`; a token whose `kid` is unknown is refused."""
    se = storage_element(tmp_path, keys.public_path)
    with running(se):
        env = {"INGESTER_AUTH_JWKS_URL": f"{tokens.url}/.well-known/jwks.json"}
        gw = gateway(tmp_path, keys.public_path, [se_entry(se)], env=env)
        gw.env = {k: v for k, v in (gw.env or {}).items() if k != "INGESTER_AUTH_PUBLIC_KEY_FILE"}
        with running(gw):
            good = {"Authorization": f"Bearer {keys.token('dave', kid='dev')}"}
            answer = http_call(gw.url, "PUT", "/api/v1/files/j.bin", os.urandom(1000), good)
            assert answer.status == 201, answer.body
            unknown = {"Authorization": f"Bearer {keys.token('dave', kid='rotated-away')}"}
            answer = http_call(gw.url, "PUT", "/api/v1/files/j.bin", b"x", unknown)
            assert answer.status == 401


def test_jwks_document_verifies_the_service_tokens(tokens: ServerProcess) -> None:
    async def body(session: aiohttp.ClientSession) -> str:
        source = JwksKeySource(f"{tokens.url}/.well-known/jwks.json", lambda: session)
        account = ServiceAccount(
            f"{tokens.url}/api/v1/auth/token", *SERVICE_CLIENT, lambda: session
        )
        token = await account.token()
        principal = await TokenVerifier(source).verify(token)
        return principal.sub

    assert asyncio.run(_with_session(body)) == SERVICE_CLIENT[0]


def _principal(token: str) -> Principal:
    return Principal(
        sub="u",
        role="user",
        token_type="admin_user",
        name=None,
        client_id=None,
        expires_at=0,
        token=token,
    )
