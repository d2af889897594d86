"""Delivery markers: one Redis key per (intent, device) in two states, in-flight and sent.

A worker *claims* a device before sending (``SET NX GET`` with a short lease) and marks it *sent* after
the provider accepted it (a long TTL, longer than any redelivery window). A redelivered or replayed
batch therefore skips what was sent; a device whose claim belonged to a worker that died is held only
until the lease runs out, then it is claimed and sent again, so a crash never loses a push for good.

Writes after a send (``sent`` marks, releases) are retried while Redis is unreachable, for up to one
lease: a push the provider accepted must be recorded, or it is sent again once its claim runs out.
A claim is not retried: nothing was sent yet, so the batch can simply wait (``goalhorn.dispatch.failures``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from goalhorn.dispatch.failures import redis_unavailable
from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.redis_client import Redis

log = logging.getLogger(__name__)

IN_FLIGHT = b"inflight"
SENT = b"sent"
WRITE_RETRY_FIRST_S = 0.05
WRITE_RETRY_MAX_S = 1.0


@dataclass(slots=True)
class Claims:
    claimed: list[Device] = field(default_factory=list)
    already_sent: list[Device] = field(default_factory=list)
    held: list[Device] = field(default_factory=list)
    """Claimed by another attempt (live, or dead with its lease still running)."""
    held_for_s: float = 0.0
    """The longest remaining lease among ``held``."""


# One round trip and one command per batch, whatever its size: per-key SETs cost the client
# ~25 us each to pack, which dominated delivery on large batches. All keys of an intent share the
# {intent_id} hash tag, so the scripts are valid on Redis Cluster.
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local old = redis.call('SET', key, ARGV[1], 'NX', 'GET', 'EX', ARGV[2])
  if not old then
    out[i] = 0
  elseif old == ARGV[3] then
    out[i] = -1
  else
    out[i] = redis.call('PTTL', key)
  end
end
return out
"""

_MARK = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
end
return #KEYS
"""


class DeliveryMarkers:
    def __init__(self, redis: Redis, keys: Keys, *, lease_s: int, sent_ttl_s: int) -> None:
        self._keys = keys
        self._redis = redis
        self._lease_s = lease_s
        self._sent_ttl_s = sent_ttl_s
        self._claim = redis.register_script(_CLAIM)
        self._mark = redis.register_script(_MARK)

    async def claim(self, intent_id: str, devices: Sequence[Device]) -> Claims:
        """Claim every device not yet claimed or sent, in one round trip."""
        keys = [self._keys.delivery_marker(intent_id, d.device_id) for d in devices]
        states: list[int] = await self._claim(keys=keys, args=[IN_FLIGHT, self._lease_s, SENT])
        claims = Claims()
        for device, state in zip(devices, states, strict=True):
            if state == 0:
                claims.claimed.append(device)
            elif state == -1:
                claims.already_sent.append(device)
            else:
                claims.held.append(device)
                claims.held_for_s = max(claims.held_for_s, max(state, 0) / 1000)
        return claims

    async def mark_sent(self, intent_id: str, device_ids: Sequence[str]) -> None:
        if device_ids:
            keys = [self._keys.delivery_marker(intent_id, d) for d in device_ids]
            await self._persist(lambda: self._mark(keys=keys, args=[SENT, self._sent_ttl_s]), len(keys))

    async def release(self, intent_id: str, device_ids: Sequence[str]) -> None:
        """Drop claims whose send definitely did not happen, so a retry can claim them at once."""
        if device_ids:
            keys = [self._keys.delivery_marker(intent_id, d) for d in device_ids]
            await self._persist(lambda: self._redis.delete(*keys), len(keys))

    async def _persist(self, write: Callable[[], Awaitable[object]], size: int) -> None:
        """Run ``write``, again while Redis is unreachable, for up to one lease: what it records happened
        already, and while the claims last no other attempt can act on those devices."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._lease_s
        delay = WRITE_RETRY_FIRST_S
        while True:
            try:
                await write()
                return
            except Exception as exc:
                left = give_up_at - loop.time()
                if not redis_unavailable(exc) or left <= 0:
                    raise
                if delay == WRITE_RETRY_FIRST_S:
                    log.warning("Redis unavailable (%s): holding %d marker writes", type(exc).__name__, size)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, WRITE_RETRY_MAX_S)
