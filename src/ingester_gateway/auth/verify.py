"""JWT verification for artStore Admin Module tokens (RS256 only) and role rules.

python-jose stays behind this module. The key is always an RSA key object and the
algorithm list is pinned, so `alg: none`, HS256 signed with the public key as the
secret, and other key-confusion tricks fail before any signature math.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Annotated, Any, Protocol

import aiohttp
import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import ExpiredSignatureError, JOSEError, JWTClaimsError

from ingester_gateway import errors
from ingester_gateway.errors import ApiError
from ingester_gateway.models import DEFAULT_UPLOAD_ROLES, ROLES

ALGORITHM = "RS256"
WRITE_SCOPE = "files:write"
# Token types the Admin Module issues that may act here (`refresh` never may).
ACCEPTED_TYPES = frozenset({"admin_user", "service_account", "access"})
ADMIN_ROLES = frozenset({"super_admin", "admin"})


class Principal(msgspec.Struct, frozen=True):
    """Who is uploading: the verified claims the gateway acts on."""

    sub: str
    role: str
    token_type: str | None
    name: str | None
    client_id: str | None
    expires_at: int
    token: str = msgspec.field(default="")  # forwarded upstream; never logged
    # The Admin Module's `rate_limit` claim: requests per minute (fair use), None: none.
    rate_limit: int | None = None

    def __repr__(self) -> str:  # keep the token out of any accidental log line
        return f"Principal(sub={self.sub!r}, role={self.role!r})"

    @property
    def is_admin(self) -> bool:
        return self.role in ADMIN_ROLES


class Claims(msgspec.Struct):
    sub: str
    exp: int
    role: str | None = None
    type: str | None = None
    name: str | None = None
    username: str | None = None
    client_id: str | None = None
    scope: str | list[str] | None = None
    iat: int | float | None = None
    nbf: int | float | None = None
    jti: str | None = None
    # Requests per minute allowed to this account (artStore's service accounts carry it).
    rate_limit: Annotated[int, msgspec.Meta(ge=0)] | None = None


def _unauthorized(message: str) -> ApiError:
    error = errors.UNAUTHORIZED(message)
    challenge = f'Bearer realm="ingester", error="invalid_token", error_description="{message}"'
    error.headers = [(b"www-authenticate", challenge.encode())]  # RFC 6750's detail
    return error


def _forbidden(message: str) -> ApiError:
    return errors.FORBIDDEN(message)


MISSING_TOKEN = errors.UNAUTHORIZED("missing bearer token")


def load_rsa_public_key(pem: bytes) -> Key:
    """An RSA public key object from PEM; anything else is refused."""
    text = pem.decode("ascii", "replace")
    if "PRIVATE KEY" in text:
        raise ValueError("expected a public key, got a private key")
    try:
        key = jwk.construct(pem, ALGORITHM)
    except JOSEError as exc:
        raise ValueError(f"not an RSA public key: {exc}") from None
    # jose wraps any PEM public key (EC, Ed25519) in its RSA class without checking.
    if not isinstance(getattr(key, "prepared_key", None), rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


class KeySource(Protocol):
    async def key_for(self, kid: str | None) -> Key: ...


class StaticKeySource:
    """One public key from a PEM file; `kid` is not consulted."""

    def __init__(self, key: Key) -> None:
        self._key = key

    @classmethod
    def from_file(cls, path: str) -> StaticKeySource:
        with open(path, "rb") as fh:
            return cls(load_rsa_public_key(fh.read()))

    async def key_for(self, kid: str | None) -> Key:
        return self._key


class _Jwk(msgspec.Struct):
    kty: str
    kid: str | None = None
    use: str | None = None
    alg: str | None = None
    n: str | None = None
    e: str | None = None


class _Jwks(msgspec.Struct):
    keys: list[_Jwk]


class JwksKeySource:
    """RSA keys from a JWKS URL, cached by `kid`; an unknown `kid` triggers one refresh.

    Refreshes are single-flight and at most one per `min_refresh_interval`, so a
    stream of tokens with made-up `kid`s cannot turn into a stream of fetches.
    """

    def __init__(
        self,
        url: str,
        session_factory: Callable[[], aiohttp.ClientSession],
        max_age: float = 300.0,
        min_refresh_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._session_factory = session_factory
        self._max_age = max_age
        self._min_interval = min_refresh_interval
        self._clock = clock
        self._keys: dict[str | None, Key] = {}
        self._fetched_at = -1e18
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> Key:
        key = self._lookup(kid)
        stale = self._clock() - self._fetched_at > self._max_age
        if key is not None and not stale:
            return key
        async with self._lock:
            key = self._lookup(kid)
            stale = self._clock() - self._fetched_at > self._max_age
            if (key is None or stale) and self._clock() - self._fetched_at >= self._min_interval:
                await self._refresh()
            key = self._lookup(kid)
        if key is None:
            raise _unauthorized("unknown signing key")
        return key

    def _lookup(self, kid: str | None) -> Key | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._fetched_at = self._clock()
        try:
            session = self._session_factory()
            async with session.get(self._url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                resp.raise_for_status()
                document = msgspec.json.decode(await resp.read(), type=_Jwks)
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
            return  # keep the keys we had; tokens signed by known keys still verify
        keys: dict[str | None, Key] = {}
        for entry in document.keys:
            if entry.kty != "RSA" or entry.use not in (None, "sig"):
                continue
            if entry.alg not in (None, ALGORITHM):
                continue
            try:
                keys[entry.kid] = jwk.construct(msgspec.to_builtins(entry), ALGORITHM)
            except JOSEError:
                continue
        if keys:
            self._keys = keys


class TokenVerifier:
    """Turns an `Authorization` header into a `Principal`, or raises a 401/403 ApiError.

    Verified tokens are cached by their exact text (bounded LRU); a cached token
    still has `exp`/`nbf` checked on every use, so a repeat costs no RSA verify.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        roles: Collection[str] = DEFAULT_UPLOAD_ROLES,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: int = 10,
        max_token_bytes: int = 8192,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._roles = frozenset(roles)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    async def verify_header(self, authorization: bytes | None) -> Principal:
        if not authorization:
            raise MISSING_TOKEN
        if len(authorization) > self._max_token_bytes + 7:
            raise _unauthorized("token too large")
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise _unauthorized("expected 'Authorization: Bearer <token>'")
        try:
            text = token.strip().decode("ascii")
        except UnicodeDecodeError:
            raise _unauthorized("malformed token") from None
        return await self.verify(text)

    async def verify(self, token: str) -> Principal:
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            principal, not_before = cached
            if now < not_before - self._leeway:
                raise _unauthorized("token not yet valid")
            if now > principal.expires_at + self._leeway:
                self._cache.pop(token, None)
                raise _unauthorized("token expired")
            self._cache.move_to_end(token)
            return principal
        principal, not_before = await self._verify_uncached(token)
        if self._cache_size:
            self._cache[token] = (principal, not_before)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    async def _verify_uncached(self, token: str) -> tuple[Principal, float]:
        if len(token) > self._max_token_bytes:
            raise _unauthorized("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError:
            raise _unauthorized("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise _unauthorized(f"algorithm must be {ALGORITHM}")
        if "crit" in header:
            # RFC 7515 4.1.11: extensions named critical must be understood; none is here.
            raise _unauthorized("the token names critical header extensions")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _unauthorized("malformed token")
        key = await self._keys.key_for(kid)
        options: dict[str, Any] = {
            "leeway": self._leeway,
            "require_exp": True,
            "require_sub": True,
            "verify_aud": self._audience is not None,
            "verify_iss": self._issuer is not None,
            # jose passes a token without `aud` even when an audience is configured.
            "require_aud": self._audience is not None,
            "require_iss": self._issuer is not None,
            "verify_at_hash": False,
        }
        try:
            raw = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options=options,
            )
        except ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except JWTClaimsError as exc:
            raise _unauthorized(_claims_message(str(exc))) from None
        except JOSEError:
            raise _unauthorized("invalid token signature or format") from None
        try:
            claims = msgspec.convert(raw, Claims)
        except msgspec.ValidationError as exc:
            raise _unauthorized(f"invalid claims: {exc}") from None
        return self._authorize(claims, token), float(claims.nbf or 0)

    def _authorize(self, claims: Claims, token: str) -> Principal:
        if not claims.sub.strip():
            raise _unauthorized("the token names no subject")
        token_type = claims.type.lower() if claims.type is not None else None
        if token_type == "refresh":
            raise _unauthorized("refresh tokens cannot be used to upload")
        if token_type is not None and token_type not in ACCEPTED_TYPES:
            raise _unauthorized("unknown token type")
        if claims.role is None:
            raise _forbidden("token carries no role")
        if claims.role not in ROLES:
            raise _forbidden(f"unknown role {claims.role!r}")  # never promoted
        if claims.role not in self._roles:
            raise _forbidden(f"role {claims.role!r} may not upload")
        if claims.scope is not None:
            scopes = claims.scope.split() if isinstance(claims.scope, str) else claims.scope
            if WRITE_SCOPE not in scopes:
                raise errors.INSUFFICIENT_SCOPE(f"token lacks scope {WRITE_SCOPE}")
        return Principal(
            sub=claims.sub,
            role=claims.role,
            token_type=token_type,
            name=claims.name or claims.username,
            client_id=claims.client_id,
            expires_at=claims.exp,
            token=token,
            rate_limit=claims.rate_limit or None,
        )


def _claims_message(text: str) -> str:
    lowered = text.lower()
    if "before" in lowered or "nbf" in lowered:
        return "token not yet valid"
    if "audience" in lowered:
        return "token audience does not match"
    if "issuer" in lowered:
        return "token issuer does not match"
    return "invalid token claims"
