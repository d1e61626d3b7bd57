"""Token verification rules: RS256 pinned, claims, roles, scope, cache, key sources."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given
from hypothesis import strategies as st
from jose import jwk, jwt
from jose.backends.base import Key

from ingester_gateway.auth.verify import (
    JwksKeySource,
    KeySource,
    Principal,
    StaticKeySource,
    TokenVerifier,
    load_rsa_public_key,
)
from ingester_gateway.errors import ApiError
from ingester_gateway.reference.tokens import generate_keypair, mint_token
from tests.kit import DevKeys, FakeClock, FakeSession, run


class CountingKeySource:
    """Wraps a key source; counts lookups and RSA signature checks."""

    def __init__(self, inner: KeySource) -> None:
        self.inner = inner
        self.lookups = 0
        self.verifies = 0
        self._wrapped: set[int] = set()

    async def key_for(self, kid: str | None) -> Key:
        self.lookups += 1
        key = await self.inner.key_for(kid)
        if id(key) in self._wrapped:
            return key
        self._wrapped.add(id(key))
        original = key.verify

        def verify(msg: bytes, sig: bytes) -> bool:
            self.verifies += 1
            return bool(original(msg, sig))

        key.verify = verify  # type: ignore[method-assign]
        return key


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def craft(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def admin_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "type": "admin_user",
        "role": "user",
        "name": "Alice",
        "jti": "j-1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def signed(keys: DevKeys, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(claims, keys.private_pem.decode(), algorithm="RS256", headers=headers)


def static_source(keys: DevKeys) -> StaticKeySource:
    return StaticKeySource(load_rsa_public_key(keys.public_path.read_bytes()))


def verifier(keys: DevKeys, **kwargs: Any) -> TokenVerifier:
    return TokenVerifier(static_source(keys), **kwargs)


def refused(v: TokenVerifier, token: str | bytes | None) -> ApiError:
    header = token if token is None or isinstance(token, bytes) else f"Bearer {token}".encode()
    with pytest.raises(ApiError) as info:
        run(v.verify_header(header))
    error = info.value
    if error.status == 401:
        challenge = dict(error.headers).get(b"www-authenticate", b"")
        assert challenge.startswith(b"Bearer "), "every 401 carries a Bearer challenge"
    return error


def accepted(v: TokenVerifier, token: str) -> Principal:
    return run(v.verify_header(f"Bearer {token}".encode()))


# -- header shape -------------------------------------------------------------------


def test_a_valid_admin_module_token_gives_its_principal(keys: DevKeys) -> None:
    token = mint_token(keys.private_pem, sub="alice", role="operator", name="Alice A.")
    principal = accepted(verifier(keys), token)
    assert (principal.sub, principal.role, principal.name) == ("alice", "operator", "Alice A.")
    assert principal.token_type == "admin_user"
    assert principal.token == token
    assert token not in repr(principal)


def test_username_claim_stands_in_for_a_missing_name(keys: DevKeys) -> None:
    token = signed(keys, admin_claims(name=None, username="al"))
    assert accepted(verifier(keys), token).name == "al"


@pytest.mark.parametrize("header", [None, b""])
def test_a_missing_authorization_header_is_401(keys: DevKeys, header: bytes | None) -> None:
    error = refused(verifier(keys), header)
    assert (error.status, error.code) == (401, "unauthorized")


@pytest.mark.parametrize(
    "header", [b"Basic YWxpY2U6c2VjcmV0", b"Token abc", b"Bearer", b"Bearer    ", b"bearer"]
)
def test_a_non_bearer_or_empty_scheme_is_401(keys: DevKeys, header: bytes) -> None:
    assert refused(verifier(keys), header).status == 401


def test_the_bearer_scheme_is_case_insensitive(keys: DevKeys) -> None:
    token = mint_token(keys.private_pem, sub="alice")
    assert run(verifier(keys).verify_header(b"bearer " + token.encode())).sub == "alice"


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJSUzI1NiJ9.e30",
        b64url(b"not json") + "." + b64url(b"{}") + "." + b64url(b"sig"),
    ],
)
def test_a_malformed_token_is_401(keys: DevKeys, token: str) -> None:
    assert refused(verifier(keys), token).status == 401


def test_a_non_ascii_token_is_401(keys: DevKeys) -> None:
    assert refused(verifier(keys), "Bearer \xff\xfe.x.y".encode("latin-1")).status == 401


def test_an_oversized_token_is_401_before_any_key_lookup(keys: DevKeys) -> None:
    source = CountingKeySource(static_source(keys))
    v = TokenVerifier(source, max_token_bytes=1024)
    token = signed(keys, admin_claims(padding="x" * 2000))
    assert refused(v, token).status == 401
    assert source.lookups == 0


def test_a_kid_that_is_not_a_string_is_401(keys: DevKeys) -> None:
    token = signed(keys, admin_claims(), headers={"kid": 7})
    assert refused(verifier(keys), token).status == 401


@given(st.binary(max_size=300))
def test_any_header_bytes_give_a_401_or_403_and_nothing_else(keys: DevKeys, raw: bytes) -> None:
    v = verifier(keys)
    for header in (raw, b"Bearer " + raw):
        with pytest.raises(ApiError) as info:
            run(v.verify_header(header))
        assert info.value.status == 401


# -- time -----------------------------------------------------------------------------


def test_an_expired_token_is_401(keys: DevKeys) -> None:
    token = mint_token(keys.private_pem, sub="alice", ttl=60, now=int(time.time()) - 3600)
    error = refused(verifier(keys, leeway=10), token)
    assert error.status == 401
    assert "expired" in error.message


def test_a_token_expired_within_the_leeway_is_accepted(keys: DevKeys) -> None:
    token = mint_token(keys.private_pem, sub="alice", ttl=60, now=int(time.time()) - 65)
    assert accepted(verifier(keys, leeway=30), token).sub == "alice"


def test_a_token_not_yet_valid_beyond_the_leeway_is_401(keys: DevKeys) -> None:
    token = mint_token(keys.private_pem, sub="alice", now=int(time.time()) + 120)
    error = refused(verifier(keys, leeway=10), token)
    assert error.status == 401
    assert "not yet valid" in error.message


def test_a_token_not_yet_valid_within_the_leeway_is_accepted(keys: DevKeys) -> None:
    token = mint_token(keys.private_pem, sub="alice", now=int(time.time()) + 5)
    assert accepted(verifier(keys, leeway=30), token).sub == "alice"


@pytest.mark.parametrize("missing", ["exp", "sub"])
def test_a_token_without_exp_or_sub_is_401(keys: DevKeys, missing: str) -> None:
    assert refused(verifier(keys), signed(keys, admin_claims(**{missing: None}))).status == 401


# -- signature and algorithm --------------------------------------------------------


def test_a_token_signed_by_another_key_is_401(keys: DevKeys, other_keys: DevKeys) -> None:
    token = mint_token(other_keys.private_pem, sub="mallory", role="admin")
    assert refused(verifier(keys), token).status == 401


def test_a_tampered_payload_is_401(keys: DevKeys) -> None:
    header, _, signature = mint_token(keys.private_pem, sub="alice").split(".")
    forged_claims = b64url(json.dumps(admin_claims(role="admin")).encode())
    assert refused(verifier(keys), f"{header}.{forged_claims}.{signature}").status == 401


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_401(keys: DevKeys, alg: str) -> None:
    token = craft({"alg": alg, "typ": "JWT"}, admin_claims(role="admin"), lambda _: b"")
    assert refused(verifier(keys), token).status == 401


def test_hs256_signed_with_the_public_key_as_secret_is_401(keys: DevKeys) -> None:
    secret = keys.public_path.read_bytes()
    token = craft(
        {"alg": "HS256", "typ": "JWT"},
        admin_claims(role="admin"),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    source = CountingKeySource(static_source(keys))
    assert refused(TokenVerifier(source), token).status == 401
    assert source.verifies == 0


def test_hs256_claiming_rs256_in_the_header_is_401(keys: DevKeys) -> None:
    secret = keys.public_path.read_bytes()
    token = craft(
        {"alg": "RS256", "typ": "JWT"},
        admin_claims(role="admin"),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    assert refused(verifier(keys), token).status == 401


def test_another_rsa_algorithm_than_rs256_is_401(keys: DevKeys) -> None:
    token = jwt.encode(admin_claims(), keys.private_pem.decode(), algorithm="RS512")
    assert refused(verifier(keys), token).status == 401


# -- token type, roles, scope -------------------------------------------------------


@pytest.mark.parametrize(
    "token_type", ["refresh", "REFRESH", "Refresh", "rEfReSh", "refresh ", "password_reset"]
)
def test_a_refresh_token_in_any_case_or_an_unknown_type_is_401(
    keys: DevKeys, token_type: str
) -> None:
    token = mint_token(keys.private_pem, sub="alice", role="admin", token_type=token_type)
    assert refused(verifier(keys), token).status == 401


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["x-unknown"], []])
def test_a_token_naming_critical_header_extensions_is_401(keys: DevKeys, crit: list[str]) -> None:
    """RFC 7515 4.1.11: no extension is understood here, so any `crit` refuses."""
    token = signed(keys, admin_claims(), headers={"crit": crit, "x-unknown": True})
    error = refused(verifier(keys), token)
    assert error.status == 401
    assert "critical" in error.message


@pytest.mark.parametrize("sub", ["", " ", "\t"])
def test_a_token_with_an_empty_subject_is_401(keys: DevKeys, sub: str) -> None:
    error = refused(verifier(keys), signed(keys, admin_claims(sub=sub)))
    assert error.status == 401
    assert "subject" in error.message


@pytest.mark.parametrize("token_type", ["admin_user", "ADMIN_USER", "Service_Account", "access"])
def test_the_admin_modules_token_types_are_accepted_in_any_case(
    keys: DevKeys, token_type: str
) -> None:
    token = mint_token(keys.private_pem, sub="alice", role="admin", token_type=token_type)
    assert accepted(verifier(keys), token).token_type == token_type.lower()


@pytest.mark.parametrize("role", ["superuser", "root", "Admin", "", "guest", "SUPER_ADMIN"])
def test_an_unknown_role_is_403_and_never_promoted(keys: DevKeys, role: str) -> None:
    token = mint_token(keys.private_pem, sub="alice", role=role)
    error = refused(verifier(keys), token)
    assert error.status == 403


def test_a_token_without_a_role_is_403(keys: DevKeys) -> None:
    assert refused(verifier(keys), signed(keys, admin_claims(role=None))).status == 403


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("super_admin", True),
        ("admin", True),
        ("operator", True),
        ("user", True),
        ("readonly", False),
        ("auditor", False),
    ],
)
def test_artstores_roles_upload_by_default_except_readonly_and_auditor(
    keys: DevKeys, role: str, allowed: bool
) -> None:
    token = mint_token(keys.private_pem, sub="alice", role=role)
    if allowed:
        assert accepted(verifier(keys), token).role == role
    else:
        error = refused(verifier(keys), token)
        assert (error.status, error.code) == (403, "forbidden")


def test_the_upload_roles_are_configurable(keys: DevKeys) -> None:
    v = verifier(keys, roles=["super_admin", "admin"])
    assert accepted(v, mint_token(keys.private_pem, sub="a", role="admin")).is_admin
    assert refused(v, mint_token(keys.private_pem, sub="a", role="user")).status == 403


@pytest.mark.parametrize("scope", ["files:read", "openid profile", "", ["files:read"]])
def test_a_scope_without_files_write_is_403_insufficient_scope(
    keys: DevKeys, scope: str | list[str]
) -> None:
    error = refused(verifier(keys), signed(keys, admin_claims(scope=scope)))
    assert (error.status, error.code) == (403, "insufficient_scope")


@pytest.mark.parametrize("scope", ["files:write", "openid files:write profile", ["files:write"]])
def test_a_scope_with_files_write_is_accepted(keys: DevKeys, scope: str | list[str]) -> None:
    assert accepted(verifier(keys), signed(keys, admin_claims(scope=scope))).sub == "alice"


# -- issuer and audience ------------------------------------------------------------


def test_issuer_and_audience_are_ignored_when_not_configured(keys: DevKeys) -> None:
    token = signed(keys, admin_claims(iss="https://anyone", aud="someone-else"))
    assert accepted(verifier(keys), token).sub == "alice"


def test_a_configured_issuer_must_match(keys: DevKeys) -> None:
    v = verifier(keys, issuer="https://admin.artstore")
    assert accepted(v, signed(keys, admin_claims(iss="https://admin.artstore"))).sub == "alice"
    assert refused(v, signed(keys, admin_claims(iss="https://evil"))).status == 401
    assert refused(v, signed(keys, admin_claims())).status == 401


def test_a_configured_audience_must_match(keys: DevKeys) -> None:
    v = verifier(keys, audience="ingester")
    assert accepted(v, signed(keys, admin_claims(aud="ingester"))).sub == "alice"
    assert accepted(v, signed(keys, admin_claims(aud=["other", "ingester"]))).sub == "alice"
    assert refused(v, signed(keys, admin_claims(aud="query-module"))).status == 401


def test_a_configured_audience_refuses_a_token_without_aud(keys: DevKeys) -> None:
    v = verifier(keys, audience="ingester")
    assert refused(v, signed(keys, admin_claims())).status == 401


# -- cache --------------------------------------------------------------------------


def test_a_repeated_token_is_verified_once(keys: DevKeys) -> None:
    source = CountingKeySource(static_source(keys))
    v = TokenVerifier(source)
    token = mint_token(keys.private_pem, sub="alice")
    for _ in range(5):
        assert accepted(v, token).sub == "alice"
    assert (source.lookups, source.verifies) == (1, 1)


def test_a_cached_token_is_refused_once_it_expires(keys: DevKeys) -> None:
    clock = FakeClock(time.time())
    source = CountingKeySource(static_source(keys))
    v = TokenVerifier(source, leeway=10, clock=clock)
    token = mint_token(keys.private_pem, sub="alice", ttl=60)
    accepted(v, token)
    clock.advance(65)
    accepted(v, token)
    clock.advance(10)
    error = refused(v, token)
    assert "expired" in error.message
    assert source.lookups == 1


def test_a_refused_token_is_not_cached(keys: DevKeys) -> None:
    source = CountingKeySource(static_source(keys))
    v = TokenVerifier(source, roles=["admin"])
    token = mint_token(keys.private_pem, sub="alice", role="user")
    refused(v, token)
    refused(v, token)
    assert source.lookups == 2


def test_the_cache_is_bounded(keys: DevKeys) -> None:
    source = CountingKeySource(static_source(keys))
    v = TokenVerifier(source, cache_size=2)
    tokens = [mint_token(keys.private_pem, sub=f"user-{i}") for i in range(3)]
    for token in tokens:
        accepted(v, token)
    accepted(v, tokens[2])
    assert source.lookups == 3
    accepted(v, tokens[0])  # evicted first: verified again
    assert source.lookups == 4


def test_a_zero_cache_size_verifies_every_time(keys: DevKeys) -> None:
    source = CountingKeySource(static_source(keys))
    v = TokenVerifier(source, cache_size=0)
    token = mint_token(keys.private_pem, sub="alice")
    accepted(v, token)
    accepted(v, token)
    assert source.lookups == 2


# -- loading keys -------------------------------------------------------------------


def test_load_rsa_public_key_accepts_a_public_pem(keys: DevKeys) -> None:
    key = load_rsa_public_key(keys.public_path.read_bytes())
    assert key.to_dict()["kty"] == "RSA"


def test_load_rsa_public_key_refuses_a_private_key(keys: DevKeys) -> None:
    with pytest.raises(ValueError, match="private"):
        load_rsa_public_key(keys.private_pem)


@pytest.mark.parametrize(
    "pem", [b"", b"hello", b"\xff\xfe\x00garbage", b"-----BEGIN PUBLIC KEY-----\nAAAA\n"]
)
def test_load_rsa_public_key_refuses_garbage(pem: bytes) -> None:
    with pytest.raises(ValueError):
        load_rsa_public_key(pem)


@pytest.mark.parametrize(
    "public_key",
    [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ],
    ids=["ec", "ed25519"],
)
def test_load_rsa_public_key_refuses_a_non_rsa_public_key(public_key: Any) -> None:
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="RSA"):
        load_rsa_public_key(pem)


def test_static_key_source_reads_a_file(keys: DevKeys) -> None:
    v = TokenVerifier(StaticKeySource.from_file(str(keys.public_path)))
    assert accepted(v, mint_token(keys.private_pem, sub="bob")).sub == "bob"


# -- JWKS ---------------------------------------------------------------------------


def jwk_of(keys: DevKeys, kid: str, **extra: Any) -> dict[str, Any]:
    entry = dict(jwk.construct(keys.public_path.read_bytes(), "RS256").to_dict())
    entry.update({"kid": kid, "use": "sig", **extra})
    return entry


JWKS_URL = "http://admin.test/.well-known/jwks.json"


class JwksEndpoint:
    """The Admin Module's JWKS URL, answered in the test process (no socket): a mutable
    document, a status to answer with, and a count of fetches."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.document: dict[str, Any] = {"keys": keys}
        self.fetches = 0
        self.status = 200

    async def answer(self, url: str, request: Mapping[str, Any]) -> tuple[int, bytes]:
        self.fetches += 1
        await asyncio.sleep(0.02)  # long enough for concurrent lookups to overlap
        if self.status != 200:
            return self.status, b""
        return 200, json.dumps(self.document).encode()


@asynccontextmanager
async def jwks_source(
    endpoint: JwksEndpoint, clock: FakeClock, **kwargs: Any
) -> AsyncIterator[JwksKeySource]:
    session = FakeSession({("GET", JWKS_URL): endpoint.answer})
    yield JwksKeySource(JWKS_URL, lambda: session, clock=clock, **kwargs)  # type: ignore[arg-type,return-value]


async def unknown_key(source: JwksKeySource, kid: str | None) -> ApiError:
    with pytest.raises(ApiError) as info:
        await source.key_for(kid)
    assert info.value.status == 401
    return info.value


def test_jwks_keys_are_found_by_kid(keys: DevKeys, other_keys: DevKeys) -> None:
    endpoint = JwksEndpoint([jwk_of(keys, "k1"), jwk_of(other_keys, "k2")])

    async def scenario() -> None:
        async with jwks_source(endpoint, FakeClock()) as source:
            v = TokenVerifier(source)
            first = await v.verify(mint_token(keys.private_pem, sub="a", kid="k1"))
            second = await v.verify(mint_token(other_keys.private_pem, sub="b", kid="k2"))
            assert (first.sub, second.sub) == ("a", "b")
            with pytest.raises(ApiError) as info:  # signed by k2's key, labelled k1
                await v.verify(mint_token(other_keys.private_pem, sub="c", kid="k1"))
            assert info.value.status == 401
        assert endpoint.fetches == 1

    run(scenario())


def test_a_single_jwks_key_serves_tokens_without_kid(keys: DevKeys) -> None:
    endpoint = JwksEndpoint([jwk_of(keys, "only")])

    async def scenario() -> None:
        async with jwks_source(endpoint, FakeClock()) as source:
            principal = await TokenVerifier(source).verify(mint_token(keys.private_pem, sub="a"))
            assert principal.sub == "a"

    run(scenario())


def test_an_unknown_kid_triggers_exactly_one_refresh(keys: DevKeys, other_keys: DevKeys) -> None:
    endpoint = JwksEndpoint([jwk_of(keys, "k1")])
    clock = FakeClock()

    async def scenario() -> None:
        async with jwks_source(endpoint, clock, min_refresh_interval=10.0) as source:
            await source.key_for("k1")
            assert endpoint.fetches == 1
            endpoint.document["keys"].append(jwk_of(other_keys, "k2"))  # the Admin rotates
            clock.advance(11)
            found = await asyncio.gather(*(source.key_for("k2") for _ in range(20)))
            assert endpoint.fetches == 2
            assert all(key is found[0] for key in found)
            await source.key_for("k1")
            assert endpoint.fetches == 2

    run(scenario())


def test_concurrent_lookups_of_a_made_up_kid_fetch_once(keys: DevKeys) -> None:
    endpoint = JwksEndpoint([jwk_of(keys, "k1")])
    clock = FakeClock()

    async def scenario() -> None:
        async with jwks_source(endpoint, clock, min_refresh_interval=10.0) as source:
            await source.key_for("k1")
            clock.advance(11)
            results = await asyncio.gather(
                *(source.key_for("made-up") for _ in range(20)), return_exceptions=True
            )
            assert all(isinstance(r, ApiError) and r.status == 401 for r in results)
            assert endpoint.fetches == 2

    run(scenario())


def test_refreshes_are_rate_limited(keys: DevKeys) -> None:
    endpoint = JwksEndpoint([jwk_of(keys, "k1")])
    clock = FakeClock()

    async def scenario() -> None:
        async with jwks_source(endpoint, clock, min_refresh_interval=10.0) as source:
            await source.key_for("k1")
            for _ in range(5):
                await unknown_key(source, "nope")
                clock.advance(1)
            assert endpoint.fetches == 1  # the interval had not passed yet
            clock.advance(10)
            await unknown_key(source, "nope")
            assert endpoint.fetches == 2
            await unknown_key(source, "still-nope")
            assert endpoint.fetches == 2

    run(scenario())


def test_stale_keys_are_refetched_after_max_age(keys: DevKeys) -> None:
    endpoint = JwksEndpoint([jwk_of(keys, "k1")])
    clock = FakeClock()

    async def scenario() -> None:
        async with jwks_source(endpoint, clock, max_age=300.0) as source:
            await source.key_for("k1")
            clock.advance(100)
            await source.key_for("k1")
            assert endpoint.fetches == 1
            clock.advance(250)
            await source.key_for("k1")
            assert endpoint.fetches == 2

    run(scenario())


def test_a_failed_refresh_keeps_the_known_keys(keys: DevKeys) -> None:
    endpoint = JwksEndpoint([jwk_of(keys, "k1")])
    clock = FakeClock()

    async def scenario() -> None:
        async with jwks_source(endpoint, clock, max_age=300.0) as source:
            key = await source.key_for("k1")
            endpoint.status = 500
            clock.advance(400)
            assert await source.key_for("k1") is key
            assert endpoint.fetches == 2

    run(scenario())


def test_non_rsa_and_non_signing_keys_in_the_set_are_ignored(
    keys: DevKeys, other_keys: DevKeys
) -> None:
    ec_key = jwk.construct(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "ES256",
    ).to_dict()
    endpoint = JwksEndpoint(
        [
            {**ec_key, "kid": "ec", "use": "sig"},
            {"kty": "oct", "kid": "hmac", "k": b64url(b"secret"), "alg": "HS256"},
            jwk_of(other_keys, "enc", use="enc"),
            jwk_of(other_keys, "rs512", alg="RS512"),
            jwk_of(keys, "good"),
        ]
    )

    async def scenario() -> None:
        async with jwks_source(endpoint, FakeClock()) as source:
            assert (await source.key_for("good")).to_dict()["kty"] == "RSA"
            for kid in ("ec", "hmac", "enc", "rs512"):
                await unknown_key(source, kid)
            assert endpoint.fetches == 1

    run(scenario())


def test_generated_dev_keys_verify_minted_tokens(tmp_path: Any) -> None:
    private, public = generate_keypair(tmp_path, bits=2048)
    v = TokenVerifier(StaticKeySource.from_file(str(public)))
    token = mint_token(private.read_bytes(), sub="svc", role="admin", token_type="service_account")
    principal = accepted(v, token)
    assert (principal.sub, principal.role, principal.token_type) == (
        "svc",
        "admin",
        "service_account",
    )
