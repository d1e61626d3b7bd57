"""The Admin Module's file registry, as the gateway uses it: register a stored file,
read a record, update one after finalize. Every call carries the gateway's
service-account token (renewed once if the Admin refuses it).

Failures come in two kinds: `AdminUnavailable` (no answer, a timeout, a 5xx, no
token) may pass, so the caller queues the work and tries again; `AdminRefused` (a 4xx)
will not, whatever the retry."""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from ingester_gateway.admin.transport import TransportError
from ingester_gateway.admin.wire import FileRecord, FileRegistration, FileUpdate
from ingester_gateway.auth.credentials import CredentialError, ServiceAccount
from ingester_gateway.tracing import NO_TRACING, Tracing
from ingester_gateway.upstream.wire import describe_error

Registered = Literal["registered", "already_registered"]
_record = msgspec.json.Decoder(FileRecord)
_encoder = msgspec.json.Encoder()


class AdminUnavailable(Exception):
    """The Admin Module could not be asked (or did not answer): try again later."""


class AdminRefused(Exception):
    """The Admin Module refused: the same request would be refused again."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the Admin Module answered {status}: {reason}")
        self.status = status
        self.reason = reason


class Transport(Protocol):
    """HTTP to the Admin Module: (status, body), or TransportError without an answer."""

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, bytes]: ...


FILES = "/api/v1/files"


class AdminClient:
    def __init__(
        self, transport: Transport, account: ServiceAccount, tracing: Tracing = NO_TRACING
    ) -> None:
        self._transport = transport
        self._account = account
        self._tracing = tracing  # every call carries the current trace (traceparent)

    async def register(self, registration: FileRegistration) -> Registered:
        """Register a file; a file the registry already holds counts as registered
        (a retry after an answer that was lost must not fail)."""
        status, raw = await self._call("POST", FILES, _encoder.encode(registration))
        if status in (200, 201):
            return "registered"
        reason = describe_error(raw)
        if status == 400 and "already exists" in reason:
            return "already_registered"
        raise AdminRefused(status, reason)

    async def get(self, file_id: str) -> FileRecord | None:
        status, raw = await self._call("GET", f"{FILES}/{file_id}")
        if status == 404:
            return None
        if status != 200:
            raise AdminRefused(status, describe_error(raw))
        try:
            return _record.decode(raw)
        except msgspec.DecodeError as exc:
            raise AdminUnavailable(f"the Admin Module sent an unusable record: {exc}") from None

    async def update(self, file_id: str, update: FileUpdate) -> None:
        status, raw = await self._call("PUT", f"{FILES}/{file_id}", _encoder.encode(update))
        if status not in (200, 201):
            raise AdminRefused(status, describe_error(raw))

    async def _call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request; a 401 renews the token and tries once more. 5xx and transport
        failures raise AdminUnavailable; other answers go back to the caller."""
        for renewed in (False, True):
            try:
                token = await (self._account.renew() if renewed else self._account.token())
                headers = {"Authorization": f"Bearer {token}"}
                if body is not None:
                    headers["Content-Type"] = "application/json"
                self._tracing.inject(headers)
                status, raw = await self._transport.request(method, path, headers, body)
            except CredentialError as exc:
                raise AdminUnavailable(f"no service-account token: {exc}") from None
            except TransportError as exc:
                raise AdminUnavailable(f"the Admin Module did not answer: {exc}") from None
            if status >= 500:
                raise AdminUnavailable(f"the Admin Module answered {status}: {describe_error(raw)}")
            if status != 401 or renewed:
                return status, raw
        raise AssertionError("unreachable")  # pragma: no cover
