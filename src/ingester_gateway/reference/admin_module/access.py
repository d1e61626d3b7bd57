"""Who may do what on the file registry, decided from the bearer token.

Tokens are verified by the gateway's own TokenVerifier (RS256, pinned, `exp`/`nbf`,
token types, unknown roles refused) against the public half of the key the module signs
with, accepting every role artStore issues. Reading needs any such token; registering
and updating a service account with role `admin` or `user`; deleting a service account
with role `admin` — so an admin user's `super_admin` token is refused where artStore
refuses it.
"""

from __future__ import annotations

from ingester_gateway.auth.verify import KeySource, Principal, TokenVerifier
from ingester_gateway.errors import ApiError
from ingester_gateway.models import ROLES
from ingester_gateway.reference.admin_module.validation import HttpError

WRITE_ROLES = frozenset({"admin", "user"})
DELETE_ROLES = frozenset({"admin"})


class Access:
    def __init__(self, keys: KeySource) -> None:
        self._verifier = TokenVerifier(keys, roles=ROLES)

    async def caller(self, authorization: bytes | None) -> Principal:
        """Any valid token; HttpError(401, or 403 for an unknown role) otherwise."""
        try:
            return await self._verifier.verify_header(authorization)
        except ApiError as exc:
            headers = [(b"www-authenticate", b"Bearer")] if exc.status == 401 else []
            raise HttpError(exc.status, exc.message, headers) from None

    async def service_account(
        self, authorization: bytes | None, roles: frozenset[str]
    ) -> Principal:
        """A service account with one of `roles`; HttpError(401 or 403) otherwise."""
        caller = await self.caller(authorization)
        if caller.token_type != "service_account" or caller.role not in roles:
            wanted = " or ".join(sorted(r.upper() for r in roles))
            detail = f"Insufficient permissions. Required: service account with {wanted} role"
            raise HttpError(403, detail)
        return caller
