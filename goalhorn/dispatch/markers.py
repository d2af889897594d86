"""Delivery markers: one Redis key per (intent, device) in two states, in-flight and sent.

A worker *claims* a device before sending (``SET NX GET`` with a short lease) and marks it *sent* after
the provider accepted it (a long TTL, longer than any redelivery window). A redelivered or replayed
batch therefore skips what was sent; a device whose claim belonged to a worker that died is held only
until the lease runs out, then it is claimed and sent again, so a crash never loses a push for good.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.redis_client import Redis

IN_FLIGHT = b"inflight"
SENT = b"sent"


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
            await self._mark(keys=keys, args=[SENT, self._sent_ttl_s])

    async def release(self, intent_id: str, device_ids: Sequence[str]) -> None:
        """Drop claims whose send definitely did not happen, so a retry can claim them at once."""
        if device_ids:
            await self._redis.delete(*(self._keys.delivery_marker(intent_id, d) for d in device_ids))
