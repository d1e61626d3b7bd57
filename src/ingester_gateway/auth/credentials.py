"""What the gateway shows Storage Elements: the client's own bearer token, or a service
account's token from the Admin Module (OAuth2 client credentials), cached and renewed
before it expires. Compensating deletes (`DELETE /api/v1/gc/{id}`) need the latter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import msgspec

from ingester_gateway.auth.verify import Principal


class CredentialError(Exception):
    """The service token could not be obtained."""


class TokenReply(msgspec.Struct):
    access_token: str
    expires_in: int = 3600
    token_type: str = "bearer"


_reply = msgspec.json.Decoder(TokenReply)


class ServiceAccount:
    """`POST {token_url}` with `{"grant_type": "client_credentials", "client_id",
    "client_secret"}`; the token is reused until a margin before it expires."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        session: Callable[[], aiohttp.ClientSession],
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = token_url
        self._body = msgspec.json.encode(
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            }
        )
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        async with self._lock:  # one fetch at a time, however many callers wait
            if self._token is None or self._clock() >= self._renew_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    async def renew(self) -> str:
        """A fresh token: the one held was refused (revoked, or the key rotated)."""
        async with self._lock:
            await self._fetch()
            assert self._token is not None
            return self._token

    async def _fetch(self) -> None:
        started = self._clock()
        try:
            async with self._session().post(
                self._url,
                data=self._body,
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise CredentialError(f"token endpoint answered {resp.status}")
            reply = _reply.decode(raw)
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
            raise CredentialError(f"token endpoint failed: {exc}") from None
        self._token = reply.access_token
        # Renew once 80 % of the lifetime has passed (at least 5 s before expiry).
        lifetime = max(0, reply.expires_in)
        self._renew_at = started + max(0.0, min(lifetime * 0.8, lifetime - 5))


class UpstreamCredentials:
    """Headers for SE requests: uploads carry the client's token (`forward`) or the
    service account's; deletes always prefer the service account when there is one."""

    def __init__(self, service: ServiceAccount | None, forward: bool = True) -> None:
        self._service = service
        self._forward = forward or service is None

    async def for_upload(self, principal: Principal) -> dict[str, str]:
        if self._forward:
            return _bearer(principal.token)
        assert self._service is not None
        return _bearer(await self._service.token())

    async def for_delete(self, principal: Principal) -> dict[str, str]:
        if self._service is not None:
            try:
                return _bearer(await self._service.token())
            except CredentialError:
                pass  # an edit-mode SE still lets the uploader delete with their own token
        return _bearer(principal.token)

    async def for_backlog(self) -> dict[str, str]:
        """Deletes long after the request: only the service account can do them (no
        client token is ever kept)."""
        if self._service is None:
            return {}
        return _bearer(await self._service.token())


class ServiceCredentials:
    """The service account for everything: background work acts for no client (no
    client token is ever kept), e.g. a finalize resumed after a restart."""

    def __init__(self, service: ServiceAccount) -> None:
        self._service = service

    async def for_upload(self, principal: Principal) -> dict[str, str]:
        return _bearer(await self._service.token())

    async def for_delete(self, principal: Principal) -> dict[str, str]:
        return _bearer(await self._service.token())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
