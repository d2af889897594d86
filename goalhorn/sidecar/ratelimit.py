"""Per-key rate limits by tier: a token bucket (GCRA) kept atomically in Redis.

Each tier allows a steady rate with a burst (Community 1/s, burst 5; Starter 10/30; Pro 100/250;
Enterprise 1000/3000). The Generic Cell Rate Algorithm stores one number per key, the theoretical
arrival time of its next request, and one script reads and moves it, so every API process shares
the same bucket and no two requests race. The clock is Redis's own (``TIME``), not the processes'.

Why not the ``limits`` library: its strategies are fixed and moving windows (and a sliding-window
counter), none a token bucket, so "1/s with a burst of 5" can only be approximated by "5 per 5 s",
which lets a client send 5 at once every 5 s; a dozen lines of Lua say exactly what the tiers mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from goalhorn.keys import Keys
from goalhorn.redis_client import Redis
from goalhorn.sidecar.apikeys import Tier


@dataclass(frozen=True, slots=True)
class Rate:
    per_s: float
    burst: int


TIER_RATES: dict[Tier, Rate] = {
    "community": Rate(1, 5),
    "starter": Rate(10, 30),
    "pro": Rate(100, 250),
    "enterprise": Rate(1000, 3000),
}

# KEYS[1]: the key's arrival time; ARGV: emission interval (µs), burst.
# Returns {1, 0} when allowed, {0, µs to wait} when not.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local wait = next_tat - tolerance - now
if wait > 0 then
  return {0, wait}
end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return {1, 0}
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """Whole seconds (HTTP's Retry-After has no fractions), rounded up: waiting that long succeeds."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimiter:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._script = redis.register_script(_GCRA)

    async def hit(self, key_id: str, tier: Tier) -> Verdict:
        rate = TIER_RATES[tier]
        interval_us = round(1_000_000 / rate.per_s)
        allowed, wait_us = cast(
            list[int], await self._script(keys=[self._keys.rate_limit(key_id)], args=[interval_us, rate.burst])
        )
        return Verdict(bool(allowed), wait_us / 1_000_000)
