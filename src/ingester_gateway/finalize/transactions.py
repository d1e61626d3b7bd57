"""Finalize transactions: their wire (BRIEF, "Finalize") and their durable state.

A transaction's state is kept in Redis (every gateway reads it, any may resume it)
and in a file of the state directory (it survives a restart with Redis away, or
without Redis at all). Writes go to both; reads prefer Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any, Literal

import msgspec
import redis.asyncio as aioredis

from ingester_gateway.runtime.redis_io import REDIS_ERRORS

Status = Literal["copying", "copied", "verifying", "completed", "failed", "rolled_back"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "rolled_back"})
KEY = "ingester:finalize:{}"
FILE_KEY = "ingester:finalize-file:{}"  # file id -> the transaction working on it
KEEP_SECONDS = 7 * 86400


class FinalizeRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The optional body of `POST /api/v1/finalize/{file_id}`."""

    target_storage_element_id: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None


class SourceFile(msgspec.Struct, kw_only=True):
    """What is being moved: the stored bytes and what they are."""

    file_id: str
    node_id: str
    node_url: str
    storage_filename: str
    original_filename: str
    content_type: str
    file_size: int  # stored bytes
    checksum_sha256: str  # of the stored bytes
    codec: Literal["zstd", "brotli", "gzip", "none"]
    original_size: int
    original_sha256: str
    uploaded_by: str
    description: str | None = None
    user_metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class Transaction(msgspec.Struct, kw_only=True):
    transaction_id: str
    owner: str  # the sub that asked for it
    status: Status
    source: SourceFile
    target_storage_element_id: str | None = None  # asked for, then the one used
    target_url: str | None = None
    checksum_verified: bool = False
    created_at: float
    completed_at: float | None = None
    finalized_at: float | None = None
    cleanup_scheduled_at: float | None = None
    new_storage_path: str | None = None
    error_message: str | None = None
    attempts: int = 0
    description: str | None = None  # the request's, for the registry
    metadata: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


_decoder = msgspec.json.Decoder(Transaction)
_encoder = msgspec.json.Encoder()


class TransactionStore:
    def __init__(self, client: aioredis.Redis | None, directory: str | Path) -> None:
        self._redis = client
        self._dir = Path(directory) / "finalize"

    async def put(self, tx: Transaction) -> None:
        """Durable before it returns: the local file always, Redis when configured (a
        Redis error propagates: the caller tries again later)."""
        raw = _encoder.encode(tx)
        await asyncio.to_thread(self._write, tx.transaction_id, raw)
        if self._redis is not None:
            await self._redis.set(KEY.format(tx.transaction_id), raw, ex=KEEP_SECONDS)

    async def get(self, transaction_id: str) -> Transaction | None:
        if not transaction_id.isalnum():
            return None
        if self._redis is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                raw = await self._redis.get(KEY.format(transaction_id))
                if isinstance(raw, bytes):
                    return _decoder.decode(raw)
        return await asyncio.to_thread(self._read, transaction_id)

    async def claim_file(self, file_id: str, transaction_id: str) -> str | None:
        """Mark `file_id` as being finalized by `transaction_id`; the id of another
        transaction still working on it, if there is one."""
        if self._redis is not None:
            key = FILE_KEY.format(file_id)
            if await self._redis.set(key, transaction_id, nx=True, ex=KEEP_SECONDS):
                return None
            holder = await self._redis.get(key)
            other = holder.decode() if isinstance(holder, bytes) else None
            if other is not None and other != transaction_id:
                tx = await self.get(other)
                if tx is not None and not tx.done:
                    return other
            await self._redis.set(key, transaction_id, ex=KEEP_SECONDS)
            return None
        for other in await asyncio.to_thread(self._local_ids):
            tx = await asyncio.to_thread(self._read, other)
            if tx is not None and tx.source.file_id == file_id and not tx.done:
                return other
        return None

    def _path(self, transaction_id: str) -> Path:
        return self._dir / f"{transaction_id}.json"

    def _write(self, transaction_id: str, raw: bytes) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._path(transaction_id)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _read(self, transaction_id: str) -> Transaction | None:
        try:
            return _decoder.decode(self._path(transaction_id).read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None

    def _local_ids(self) -> list[str]:
        if not self._dir.is_dir():
            return []
        return [p.stem for p in self._dir.glob("*.json")]
