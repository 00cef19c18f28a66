"""Quota counters in Redis, shared by every replica. Each take is one Lua script: atomic, and timed by
Redis' own clock so replicas with skewed clocks still agree."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from policy.adapters.base import BackendUnavailable
from policy.structs import QuotaVerdict

__all__ = ["RedisQuotas"]

# KEYS[1] bucket; ARGV: capacity, refill per second, cost. State: tokens, updated (µs).
_BUCKET_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2]) / 1000000
local cost = tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(s[1])
local updated = tonumber(s[2])
if tokens == nil then tokens = capacity; updated = now end
if now > updated then
  tokens = math.min(capacity, tokens + (now - updated) * rate)
  updated = now
end
local allowed = 0
if tokens >= cost then tokens = tokens - cost; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(updated))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate / 1000) + 1000)
local wait = 0
if allowed == 0 then wait = (cost - tokens) / rate end
return {allowed, math.floor(tokens), tostring(wait / 1000000)}
"""

# KEYS[1] log (sorted set of admission times, µs); ARGV: limit, window µs, unique member.
_WINDOW_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return {1, limit - n - 1, '0'}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tostring((tonumber(oldest[2]) + window - now) / 1000000)}
"""


class RedisQuotas:
    name = "redis"

    def __init__(self, url: str, *, prefix: str, timeout: float, client: Any = None) -> None:
        self._client = client or aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, max_connections=64
        )
        self._prefix = prefix
        self._timeout = timeout
        self._bucket = self._client.register_script(_BUCKET_SCRIPT)
        self._window = self._client.register_script(_WINDOW_SCRIPT)
        self._counter = 0
        self._tag = os.urandom(4).hex()

    async def take(self, *, key: str, requests: int, period: float, algorithm: str) -> QuotaVerdict:
        full_key = self._prefix + algorithm[0] + ":" + key
        try:
            if algorithm == "token_bucket":
                reply = await asyncio.wait_for(
                    self._bucket(keys=[full_key], args=[requests, requests / period, 1]), self._timeout
                )
            else:
                self._counter += 1
                member = f"{self._tag}:{self._counter}"
                reply = await asyncio.wait_for(
                    self._window(keys=[full_key], args=[requests, int(period * 1_000_000), member]),
                    self._timeout,
                )
        except (TimeoutError, RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis quota call failed: {type(exc).__name__}: {exc}") from exc
        allowed, remaining, wait = reply
        return QuotaVerdict(bool(int(allowed)), requests, int(remaining), float(wait))

    async def close(self) -> None:
        await self._client.aclose()
