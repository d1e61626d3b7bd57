"""Upload states in Redis (the `StateStore` Protocol), shared by every gateway:

ingester:tus:<id>      hash: `offset` (compared on every advance), `state` (JSON)
ingester:tus:expiry    sorted set: upload id, scored by when it expires
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from ingester_gateway.resumable.ports import StateUnavailable
from ingester_gateway.resumable.state import UploadState
from ingester_gateway.runtime.redis_io import REDIS_ERRORS
from ingester_gateway.upload.progress import valid_upload_id

KEY = "ingester:tus:{}"
EXPIRY = "ingester:tus:expiry"

_ADVANCE = """
if redis.call('HGET', KEYS[1], 'offset') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'offset', ARGV[2], 'state', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 1
"""

_decoder = msgspec.json.Decoder(UploadState)
_encoder = msgspec.json.Encoder()


class RedisStateStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._advance = client.register_script(_ADVANCE)

    async def get(self, upload_id: str) -> UploadState | None:
        if not valid_upload_id(upload_id):
            return None
        try:
            raw = await self._redis.hget(KEY.format(upload_id), "state")
        except REDIS_ERRORS as exc:
            raise StateUnavailable(str(exc)) from None
        if not isinstance(raw, bytes):
            return None
        try:
            return _decoder.decode(raw)
        except msgspec.DecodeError:
            return None

    async def put(self, state: UploadState) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    KEY.format(state.id),
                    mapping={"offset": str(state.offset), "state": _encoder.encode(state)},
                )
                pipe.zadd(EXPIRY, {state.id: state.expires_at})
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StateUnavailable(str(exc)) from None

    async def advance(self, state: UploadState, expected_offset: int) -> bool:
        try:
            done = await self._advance(
                keys=[KEY.format(state.id), EXPIRY],
                args=[
                    str(expected_offset),
                    str(state.offset),
                    _encoder.encode(state),
                    state.expires_at,
                    state.id,
                ],
            )
        except REDIS_ERRORS as exc:
            raise StateUnavailable(str(exc)) from None
        return bool(done)

    async def delete(self, upload_id: str) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(KEY.format(upload_id))
                pipe.zrem(EXPIRY, upload_id)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise StateUnavailable(str(exc)) from None

    async def expiring(self, now: float, limit: int) -> list[str]:
        try:
            ids = await self._redis.zrangebyscore(EXPIRY, "-inf", now, start=0, num=limit)
        except REDIS_ERRORS as exc:
            raise StateUnavailable(str(exc)) from None
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def postpone(self, upload_id: str, until: float) -> None:
        try:
            await self._redis.zadd(EXPIRY, {upload_id: until}, xx=True)
        except REDIS_ERRORS as exc:
            raise StateUnavailable(str(exc)) from None
