"""Budgets and slots in Redis, shared by every gateway instance: one Lua script, one
round trip per upload start (`admit`) and one per upload end (`count` with the slot to
give back), sent on a pipelined connection of its own (`runtime/redis_pipeline.py`).

Why a script of our own and not the `limits` library: an upload start checks three
limits and takes a slot, atomically; with `limits` that is three round trips (one per
limit, each through redis-py's `execute_command`, ~100 µs of CPU each here) and it has
no notion of a slot held while an upload runs. One script keeps it to one round trip
and makes "refused for any reason, nothing but the request spent" atomic.

Keys, per user (`sub`), the hash tag keeping both on one Cluster slot:
  `ingester:fair:{sub}`        hash: `r` requests drained at, `b` bytes drained at (ms,
                               Redis' clock: one clock for every instance); expires once
                               both have drained
  `ingester:fair:{sub}:up`     sorted set: slot -> lease end (ms); a slot whose gateway
                               died is dropped once its lease ends (renewed every third
                               of a lease while the upload runs)
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from ingester_gateway.fair_use.limits import RATE_WINDOW, Limit, UserLimits
from ingester_gateway.fair_use.ports import Admission
from ingester_gateway.runtime.redis_pipeline import PipelinedRedis

PREFIX = "ingester:fair:"

# Replies: {outcome, wait ms, byte backlog ms}; outcome 0 admitted, else OUTCOMES' limit.
OUTCOMES: dict[int, Limit] = {1: "requests", 2: "concurrent_uploads", 3: "bytes"}
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local op = ARGV[1]

local function drained_at(field)
    return tonumber(redis.call('HGET', KEYS[1], field) or 0)
end

-- Keep the budgets until both have drained.
local function keep(r, b)
    local last = math.max(r, b)
    if last > now then
        redis.call('PEXPIRE', KEYS[1], math.ceil(last - now) + 1000)
    end
end

if op == 'admit' then
    -- ARGV: slot, uploads allowed, lease ms, ms per request, rate window ms, byte window ms
    local slot, allowed, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
    local request_cost, rate_window = tonumber(ARGV[5]), tonumber(ARGV[6])
    local byte_window = tonumber(ARGV[7])
    local r, b = drained_at('r'), drained_at('b')
    if request_cost > 0 then
        local after = math.max(r, now) + request_cost
        if after - now > rate_window then
            return {1, math.ceil(after - now - rate_window), 0}
        end
        r = after
        redis.call('HSET', KEYS[1], 'r', string.format('%.3f', r))
        keep(r, b)
    end
    local backlog = math.max(0, b - now)
    if byte_window > 0 and backlog > byte_window then
        return {3, math.ceil(backlog - byte_window), math.floor(backlog)}
    end
    if allowed > 0 then
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
        if redis.call('ZCARD', KEYS[2]) >= allowed then
            return {2, 0, math.floor(backlog)}
        end
        redis.call('ZADD', KEYS[2], now + lease, slot)
        redis.call('PEXPIRE', KEYS[2], lease + 1000)
    end
    return {0, 0, math.floor(backlog)}
elseif op == 'count' then
    -- ARGV: slot to give back ('' none), bytes, ms per byte
    local slot, bytes, byte_cost = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
    if slot ~= '' then
        redis.call('ZREM', KEYS[2], slot)
    end
    local b = drained_at('b')
    if bytes > 0 and byte_cost > 0 then
        b = math.max(b, now) + bytes * byte_cost
        redis.call('HSET', KEYS[1], 'b', string.format('%.3f', b))
        keep(drained_at('r'), b)
    end
    return {0, 0, math.floor(math.max(0, b - now))}
elseif op == 'renew' then
    -- ARGV: slot, lease ms; a slot given back (or dropped) is not brought back
    local lease = tonumber(ARGV[3])
    if redis.call('ZADD', KEYS[2], 'XX', 'CH', now + lease, ARGV[2]) > 0 then
        redis.call('PEXPIRE', KEYS[2], lease + 1000)
    end
    return {0, 0, 0}
end
return redis.error_reply('unknown fair-use operation ' .. tostring(op))
"""
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)


def keys(user: str) -> tuple[str, str]:
    return f"{PREFIX}{{{user}}}", f"{PREFIX}{{{user}}}:up"


class RedisLedger:
    needs_renewal = True

    def __init__(self, redis: PipelinedRedis, lease: float) -> None:
        self._redis = redis
        self._lease_ms = round(lease * 1000)

    async def admit(self, user: str, slot: str, limits: UserLimits) -> Admission:
        reply = await self._run(
            user,
            "admit",
            slot,
            limits.concurrent_uploads,
            self._lease_ms,
            repr(limits.request_cost * 1000),
            round(RATE_WINDOW * 1000),
            round(limits.window * 1000) if limits.bytes_per_window else 0,
        )
        outcome, wait_ms, backlog_ms = reply
        refused = OUTCOMES[outcome] if outcome else None
        return Admission(refused, wait_ms / 1000, backlog_ms / 1000)

    async def count(self, user: str, nbytes: int, limits: UserLimits, release: str | None) -> float:
        reply = await self._run(user, "count", release or "", nbytes, repr(limits.byte_cost * 1000))
        return float(reply[2]) / 1000

    async def renew(self, slots: Sequence[tuple[str, str]]) -> None:
        # All written at once, on the one pipelined connection.
        await asyncio.gather(
            *(self._run(user, "renew", slot, self._lease_ms) for user, slot in slots)
        )

    async def _run(self, user: str, *args: str | int) -> Any:
        hash_key, slots_key = keys(user)
        try:
            return await self._redis.call("EVALSHA", SHA, 2, hash_key, slots_key, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # First use since Redis started: EVAL sends the script, which Redis keeps.
            return await self._redis.call("EVAL", SCRIPT, 2, hash_key, slots_key, *args)
