"""Dev keys and tokens in the artStore Admin Module's format (for `make run`, tests,
benchmarks). The gateway itself only ever verifies."""

from __future__ import annotations

import base64
import os
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jose import jwt


def generate_keypair(out_dir: str | Path, bits: int = 2048) -> tuple[Path, Path]:
    """Write `private.pem` (0600) and `public.pem` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = out / "private.pem"
    public = out / "public.pem"
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_bytes)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def mint_token(
    private_key_pem: bytes,
    *,
    sub: str,
    role: str = "user",
    ttl: int = 3600,
    token_type: str = "admin_user",
    name: str | None = None,
    kid: str | None = None,
    now: int | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """An RS256 token with the Admin Module's claims: sub, type, role, name, jti and
    integer iat/nbf/exp."""
    issued = int(time.time()) if now is None else now
    claims: dict[str, Any] = {
        "sub": sub,
        "type": token_type,
        "role": role,
        "name": name or sub,
        "jti": str(uuid.uuid4()),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
    }
    claims.update(extra or {})
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, private_key_pem.decode("ascii"), algorithm="RS256", headers=headers)


def public_pem(private_key_pem: bytes) -> bytes:
    """The public half of a PEM private key, as PEM."""
    key = load_pem_private_key(private_key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwks_document(private_key_pem: bytes, kid: str) -> dict[str, Any]:
    """The JWKS (`/.well-known/jwks.json`) publishing the public half of the signing key."""
    key = load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the signing key must be an RSA private key")
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid}
    return {"keys": [jwk | {"n": _b64url(numbers.n), "e": _b64url(numbers.e)}]}


def _b64url(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
