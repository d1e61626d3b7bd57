"""The baseline of the small-file figure: an ingester built the way the first artStore
ingester was built, kept deliberately as it was, not optimised.

- FastAPI, the file as `UploadFile`, read whole into memory (`await file.read()`,
  1 GB hard limit);
- the bearer token verified with python-jose (RS256) on every request, no cache;
- the bytes sent on with one shared `httpx.AsyncClient` as a multipart POST to the
  Storage Element, forwarding the client's token;
- pydantic models for the response, JSON logging off (uvicorn's access log off too,
  as in the gateway).

It is charitable where the original was not: the httpx client is shared (connection
pool, keep-alive) rather than created per request.

Run by the benchmark under uvicorn, 1 worker:
    BASELINE_PUBLIC_KEY_FILE=public.pem BASELINE_SE_URL=http://127.0.0.1:PORT \
    uvicorn fastapi_ingester:app --app-dir benchmarks/baselines --port 8030
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

import httpx
from fastapi import FastAPI, File, Form, Header, HTTPException, UploadFile
from jose import JWTError, jwt
from pydantic import BaseModel

MAX_FILE_SIZE = 1024 * 1024 * 1024  # the original's hard limit: the whole file is in memory
PUBLIC_KEY = open(os.environ["BASELINE_PUBLIC_KEY_FILE"]).read()  # noqa: SIM115
SE_URL = os.environ["BASELINE_SE_URL"].rstrip("/")
ROLES = {"user", "operator", "admin"}

client: httpx.AsyncClient | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global client
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=128, max_keepalive_connections=128),
    )
    yield
    await client.aclose()


app = FastAPI(title="artStore ingester (baseline)", lifespan=lifespan)


class UploadResponse(BaseModel):
    file_id: str
    original_filename: str
    file_size: int
    checksum: str
    compressed: bool = False
    compression_algorithm: str | None = None
    uploaded_at: datetime
    storage_element_url: str


def verify_token(authorization: str | None) -> dict[str, object]:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(status_code=401, detail="Not authenticated")
    token = authorization[7:]
    try:
        claims: dict[str, object] = jwt.decode(token, PUBLIC_KEY, algorithms=["RS256"])
    except JWTError as exc:
        raise HTTPException(status_code=401, detail=f"Invalid token: {exc}") from None
    if claims.get("type") == "refresh" or claims.get("role") not in ROLES:
        raise HTTPException(status_code=403, detail="Forbidden")
    return claims


@app.get("/health/ready")
async def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/api/v1/files/upload", status_code=201, response_model=UploadResponse)
async def upload_file(
    file: Annotated[UploadFile, File()],
    authorization: Annotated[str | None, Header()] = None,
    description: Annotated[str | None, Form()] = None,
    storage_mode: Annotated[str, Form()] = "edit",
    compress: Annotated[bool, Form()] = False,
    compression_algorithm: Annotated[str, Form()] = "none",
) -> UploadResponse:
    verify_token(authorization)
    content = await file.read()  # the whole file, in memory
    if len(content) > MAX_FILE_SIZE:
        raise HTTPException(status_code=413, detail="File too large")
    checksum = hashlib.sha256(content).hexdigest()
    file_id = str(uuid.uuid4())
    assert client is not None
    response = await client.post(
        f"{SE_URL}/api/v1/files/upload",
        files={
            "file": (
                file.filename or "file",
                content,
                file.content_type or "application/octet-stream",
            )
        },
        data={
            "file_id": file_id,
            "description": description or "",
            "retention_policy": "permanent" if storage_mode == "rw" else "temporary",
        },
        headers={"Authorization": authorization or ""},
    )
    if response.status_code != 201:
        raise HTTPException(status_code=502, detail=f"storage element: {response.status_code}")
    stored = response.json()
    if stored.get("checksum") != checksum:
        raise HTTPException(status_code=502, detail="checksum mismatch")
    return UploadResponse(
        file_id=file_id,
        original_filename=file.filename or "file",
        file_size=len(content),
        checksum=checksum,
        uploaded_at=datetime.now(UTC),
        storage_element_url=SE_URL,
    )
