"""Delivery markers: one Redis key per (intent, device) in two states, in-flight and sent.

A worker *claims* a device before sending (``SET NX`` with a short lease) and marks it *sent* after
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


class DeliveryMarkers:
    def __init__(self, redis: Redis, keys: Keys, *, lease_s: int, sent_ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._lease_s = lease_s
        self._sent_ttl_s = sent_ttl_s

    async def claim(self, intent_id: str, devices: Sequence[Device]) -> Claims:
        """Claim every device not yet claimed or sent, in one round trip (two if any are held)."""
        pipe = self._redis.pipeline(transaction=False)
        for device in devices:
            pipe.set(
                self._keys.delivery_marker(intent_id, device.device_id),
                IN_FLIGHT,
                nx=True,
                get=True,
                ex=self._lease_s,
            )
        previous: list[bytes | None] = await pipe.execute()
        claims = Claims()
        for device, old in zip(devices, previous, strict=True):
            if old is None:
                claims.claimed.append(device)
            elif old == SENT:
                claims.already_sent.append(device)
            else:
                claims.held.append(device)
        if claims.held:
            pipe = self._redis.pipeline(transaction=False)
            for device in claims.held:
                pipe.pttl(self._keys.delivery_marker(intent_id, device.device_id))
            ttls_ms: list[int] = await pipe.execute()
            claims.held_for_s = max(max(ttls_ms), 0) / 1000
        return claims

    async def mark_sent(self, intent_id: str, device_ids: Sequence[str]) -> None:
        if not device_ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for device_id in device_ids:
            pipe.set(self._keys.delivery_marker(intent_id, device_id), SENT, ex=self._sent_ttl_s)
        await pipe.execute()

    async def release(self, intent_id: str, device_ids: Sequence[str]) -> None:
        """Drop claims whose send definitely did not happen, so a retry can claim them at once."""
        if device_ids:
            await self._redis.delete(*(self._keys.delivery_marker(intent_id, d) for d in device_ids))
