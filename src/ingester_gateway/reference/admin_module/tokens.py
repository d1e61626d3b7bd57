"""Who may ask for a token, and the tokens they get, in the Admin Module's format.

- Service accounts (OAuth2 client credentials): `type: service_account`, `sub` and
  `client_id` = the client id, `role` (`admin`, `user`, `auditor`, `readonly`),
  `rate_limit`, `name`.
- Admin users (login): `type: admin_user`, `sub` = `name` = the username, `role`
  (`super_admin`, `admin`, `readonly`).
Both carry `jti` and integer `iat`/`nbf`/`exp`, no `aud`, RS256 with a `kid` header.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import msgspec

from ingester_gateway.reference.admin_module.validation import Rule, check_fields
from ingester_gateway.reference.tokens import mint_token

SERVICE_ACCOUNT_ROLES = ("admin", "user", "auditor", "readonly")
ADMIN_USER_ROLES = ("super_admin", "admin", "readonly")
DEFAULT_RATE_LIMIT = 100


@dataclass(frozen=True, slots=True)
class ServiceAccountSpec:
    client_id: str
    secret: str
    role: str = "admin"
    rate_limit: int = DEFAULT_RATE_LIMIT

    @classmethod
    def parse(cls, spec: str) -> ServiceAccountSpec:
        """`ID:SECRET[:ROLE[:RATE_LIMIT]]`, role one of SERVICE_ACCOUNT_ROLES."""
        parts = spec.split(":")
        if not 2 <= len(parts) <= 4 or not all(parts):
            raise ValueError(f"service account must be ID:SECRET[:ROLE[:RATE_LIMIT]]: {spec!r}")
        role = parts[2] if len(parts) > 2 else "admin"
        if role not in SERVICE_ACCOUNT_ROLES:
            raise ValueError(f"service account role must be one of {SERVICE_ACCOUNT_ROLES}")
        limit = parts[3] if len(parts) > 3 else str(DEFAULT_RATE_LIMIT)
        if not limit.isdigit() or int(limit) < 1:
            raise ValueError(f"rate limit must be a positive integer: {limit!r}")
        return cls(parts[0], parts[1], role, int(limit))


@dataclass(frozen=True, slots=True)
class AdminUserSpec:
    username: str
    password: str
    role: str = "super_admin"

    @classmethod
    def parse(cls, spec: str) -> AdminUserSpec:
        """`NAME:PASSWORD[:ROLE]`, role one of ADMIN_USER_ROLES."""
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"admin user must be NAME:PASSWORD[:ROLE]: {spec!r}")
        role = parts[2] if len(parts) > 2 else "super_admin"
        if role not in ADMIN_USER_ROLES:
            raise ValueError(f"admin user role must be one of {ADMIN_USER_ROLES}")
        return cls(parts[0], parts[1], role)


class TokenReply(msgspec.Struct):
    access_token: str
    expires_in: int
    token_type: str = "bearer"


class WrongCredentials(Exception):
    """401: unknown client or user, or a wrong secret or password."""


_CLIENT_RULES = {
    "grant_type": Rule("choice", required=True, nullable=False, choices=("client_credentials",)),
    "client_id": Rule("str", required=True, nullable=False, min_length=1),
    "client_secret": Rule("str", required=True, nullable=False, min_length=1),
}
_LOGIN_RULES = {
    "username": Rule("str", required=True, nullable=False, min_length=1),
    "password": Rule("str", required=True, nullable=False, min_length=1),
}


class TokenIssuer:
    def __init__(
        self,
        private_pem: bytes,
        accounts: list[ServiceAccountSpec],
        users: list[AdminUserSpec],
        *,
        ttl: int = 3600,
        kid: str = "dev",
    ) -> None:
        self._pem = private_pem
        self._accounts = {a.client_id: a for a in accounts}
        self._users = {u.username: u for u in users}
        self._ttl = ttl
        self._kid = kid

    def client_credentials(self, body: dict[str, object]) -> TokenReply:
        """`POST /api/v1/auth/token`; raises ValidationFailed or WrongCredentials."""
        fields = check_fields(body, _CLIENT_RULES)
        account = self._accounts.get(fields["client_id"])
        if account is None or not _same(account.secret, fields["client_secret"]):
            raise WrongCredentials("Invalid client_id or client_secret")
        token = mint_token(
            self._pem,
            sub=account.client_id,
            role=account.role,
            ttl=self._ttl,
            token_type="service_account",
            kid=self._kid,
            extra={"client_id": account.client_id, "rate_limit": account.rate_limit},
        )
        return TokenReply(token, self._ttl)

    def login(self, body: dict[str, object]) -> TokenReply:
        """`POST /api/v1/auth/login`; raises ValidationFailed or WrongCredentials."""
        fields = check_fields(body, _LOGIN_RULES)
        user = self._users.get(fields["username"])
        if user is None or not _same(user.password, fields["password"]):
            raise WrongCredentials("Incorrect username or password")
        token = mint_token(
            self._pem,
            sub=user.username,
            role=user.role,
            ttl=self._ttl,
            token_type="admin_user",
            kid=self._kid,
        )
        return TokenReply(token, self._ttl)


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())
