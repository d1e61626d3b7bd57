"""The gateway's Redis client: every command bounded by a short timeout, so Redis
being slow or away never holds an upload for long."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

# What a Redis command raises when Redis is away or too slow.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)


def redis_client(url: str, timeout: float) -> aioredis.Redis:
    """A client whose every command gives up after `timeout` seconds."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        health_check_interval=0,
    )
