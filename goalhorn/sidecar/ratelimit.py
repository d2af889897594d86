"""Per-key rate limits by tier: a token bucket (GCRA) kept atomically in Redis.

Each tier allows a steady rate with a burst (Community 1/s, burst 5; Starter 10/30; Pro 100/250;
Enterprise 1000/3000). The Generic Cell Rate Algorithm stores one number per key, the theoretical
arrival time of its next request, and one script reads and moves it, so every API process shares
the same bucket and no two requests race. The clock is Redis's own (``TIME``), not the processes'.

A process takes tokens from the shared bucket in small batches (a twentieth of the burst, at most
one second's worth; one at a time for Community and Starter) and spends them locally for up to a
second, so a busy key costs one Redis round trip per batch, not per request. Tokens a process took
and did not spend in that second are lost, never added: the limit can only come out stricter.

Why not the ``limits`` library: its strategies are fixed and moving windows (and a sliding-window
counter), none a token bucket, so "1/s with a burst of 5" can only be approximated by "5 per 5 s",
which lets a client send 5 at once every 5 s; a dozen lines of Lua say exactly what the tiers mean.
"""

from __future__ import annotations

import asyncio
import math
import time
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

MAX_HELD = 100_000
LEASE_S = 1.0
"""How long a process may spend tokens it took from the shared bucket."""

# KEYS[1]: the key's arrival time; ARGV: emission interval (µs), burst, tokens wanted.
# Returns {tokens granted (>= 1), 0}, or {0, µs until one token is free}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local free = math.floor((now + tolerance - tat) / interval)
if free < 1 then
  return {0, tat + interval - tolerance - now}
end
local granted = math.min(free, tonumber(ARGV[3]))
local next_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return {granted, 0}
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """Whole seconds (HTTP's Retry-After has no fractions), rounded up: waiting that long succeeds."""
        return str(max(1, math.ceil(self.retry_after_s)))


def batch_of(rate: Rate) -> int:
    """Tokens a process takes at once: a twentieth of the burst, at most a second's worth."""
    return max(1, min(rate.burst // 20, int(rate.per_s)))


class RateLimiter:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._script = redis.register_script(_GCRA)
        self._held: dict[str, tuple[int, float]] = {}
        """key id -> (tokens taken and not spent, until when they may be)."""
        self._refills: dict[str, asyncio.Future[Verdict]] = {}
        """key id -> the batch being taken from Redis: concurrent requests wait for it, not take their own."""

    def _spend(self, key_id: str) -> bool:
        tokens, until = self._held.get(key_id, (0, 0.0))
        if tokens > 0 and until > time.monotonic():
            self._held[key_id] = (tokens - 1, until)
            return True
        return False

    async def hit(self, key_id: str, tier: Tier) -> Verdict:
        while not self._spend(key_id):
            pending = self._refills.get(key_id)
            if pending is None:
                return await self._refill(key_id, tier)
            outcome = await asyncio.shield(pending)
            if not outcome.allowed:
                return outcome  # the bucket is empty for everyone of this process
        return Verdict(True)

    async def _refill(self, key_id: str, tier: Tier) -> Verdict:
        """Take a batch for this request and the ones arriving while it is taken."""
        done: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._refills[key_id] = done
        verdict = Verdict(False, 1.0)
        try:
            rate = TIER_RATES[tier]
            interval_us = round(1_000_000 / rate.per_s)
            granted, wait_us = cast(
                list[int],
                await self._script(
                    keys=[self._keys.rate_limit(key_id)], args=[interval_us, rate.burst, batch_of(rate)]
                ),
            )
            if granted < 1:
                verdict = Verdict(False, wait_us / 1_000_000)
                return verdict
            if len(self._held) >= MAX_HELD:
                self._held.clear()
            self._held[key_id] = (granted - 1, time.monotonic() + LEASE_S)
            verdict = Verdict(True)
            return verdict
        finally:
            del self._refills[key_id]
            done.set_result(verdict)
