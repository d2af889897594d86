"""Event dedup: an event id is acted on once, however many polls, restarts or providers resend it.

``SET NX`` with a TTL longer than a game, so the set of remembered ids stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

from goalhorn.keys import Keys
from goalhorn.models import GameEvent
from goalhorn.redis_client import Redis


class EventDedup:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s

    async def first_seen(self, events: Sequence[GameEvent]) -> list[GameEvent]:
        """The events whose ids were not seen before, in order; they are remembered from now on."""
        if not events:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            pipe.set(self._keys.event_seen(event.event_id), b"1", nx=True, ex=self._ttl_s)
        fresh: list[bool | None] = await pipe.execute()
        return [event for event, new in zip(events, fresh, strict=True) if new]
