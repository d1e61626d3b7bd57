"""A reference of the Admin Module's token endpoint, for dev runs and tests: OAuth2
client credentials for service accounts, and the signing key as a JWKS document.

    POST /api/v1/auth/token   {"grant_type": "client_credentials", "client_id", "client_secret"}
                              -> 200 {"access_token", "token_type": "bearer", "expires_in"}
    GET  /.well-known/jwks.json
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.types import Receive, Scope, Send

from ingester_gateway.reference.tokens import jwks_document, mint_token
from ingester_gateway.runtime.asgi import read_small_body, send_json

MAX_BODY = 16 * 1024


@dataclass(frozen=True, slots=True)
class ServiceClient:
    client_id: str
    secret: str
    role: str = "admin"

    @classmethod
    def parse(cls, spec: str) -> ServiceClient:
        """`id:secret` or `id:secret:role`."""
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"client must be ID:SECRET[:ROLE], got {spec!r}")
        return cls(*parts)


class TokenRequest(msgspec.Struct):
    grant_type: str
    client_id: str
    client_secret: str


_request = msgspec.json.Decoder(TokenRequest)
_encoder = msgspec.json.Encoder()


class TokenServiceApp:
    def __init__(
        self, private_pem: bytes, clients: list[ServiceClient], ttl: int = 3600, kid: str = "dev"
    ) -> None:
        self._pem = private_pem
        self._clients = {c.client_id: c for c in clients}
        self._ttl = ttl
        self._kid = kid
        self._jwks = _encoder.encode(jwks_document(private_pem, kid))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        if path in ("/health/live", "/health/ready"):
            await send_json(send, 200, _encoder.encode({"status": "ok"}))
        elif path == "/.well-known/jwks.json" and method == "GET":
            await send_json(send, 200, self._jwks)
        elif path == "/api/v1/auth/token" and method == "POST":
            status, payload = self._issue(await read_small_body(receive, MAX_BODY))
            await send_json(send, status, _encoder.encode(payload))
        else:
            await send_json(send, 404, _encoder.encode({"detail": "Not Found"}))

    def _issue(self, body: bytes | None) -> tuple[int, dict[str, Any]]:
        if body is None:
            return 413, {"detail": "request too large"}
        try:
            request = _request.decode(body)
        except msgspec.DecodeError:
            return 400, {"error": "invalid_request"}
        if request.grant_type != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        client = self._clients.get(request.client_id)
        if client is None or not hmac.compare_digest(
            client.secret.encode(), request.client_secret.encode()
        ):
            return 401, {"error": "invalid_client"}
        token = mint_token(
            self._pem,
            sub=client.client_id,
            role=client.role,
            ttl=self._ttl,
            token_type="service_account",
            kid=self._kid,
            extra={"client_id": client.client_id},
        )
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": self._ttl}
