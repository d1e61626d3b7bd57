"""Who may do what on the file registry, decided from the bearer token.

Tokens are verified by the gateway's own TokenVerifier (RS256, pinned, `exp`/`nbf`,
refresh tokens refused), against the public half of the key the module signs with.
Reading needs any valid token; registering and updating a service account with role
`admin` or `user`; deleting a service account with role `admin` — so an admin user's
`super_admin` token is refused where artStore refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingester_gateway.auth.verify import TokenVerifier
from ingester_gateway.errors import ApiError
from ingester_gateway.reference.admin_module.validation import HttpError

WRITE_ROLES = frozenset({"admin", "user"})
DELETE_ROLES = frozenset({"admin"})


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated token. `role` and `token_type` are None for a valid token whose
    role the gateway's verifier does not let upload (with today's verifier `super_admin`,
    `readonly`, `auditor`): such a caller may read and nothing else."""

    role: str | None
    token_type: str | None


_CHALLENGE = [(b"www-authenticate", b"Bearer")]


class Access:
    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def caller(self, authorization: bytes | None) -> Caller:
        """Any valid token; HttpError(401) otherwise."""
        try:
            principal = await self._verifier.verify_header(authorization)
        except ApiError as exc:
            if exc.status == 403:
                # The verifier answers 403 only once the signature, times and type have
                # passed: the token is valid, its role is just not one it lets upload.
                return Caller(None, None)
            raise HttpError(401, exc.message, _CHALLENGE) from None
        return Caller(principal.role, principal.token_type)

    async def service_account(self, authorization: bytes | None, roles: frozenset[str]) -> Caller:
        """A service account with one of `roles`; HttpError(401 or 403) otherwise."""
        caller = await self.caller(authorization)
        if caller.token_type != "service_account" or caller.role not in roles:
            wanted = " or ".join(sorted(r.upper() for r in roles))
            raise HttpError(
                403, f"Insufficient permissions. Required: service account with {wanted} role", []
            )
        return caller
