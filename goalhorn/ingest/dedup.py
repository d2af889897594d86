"""Event dedup: an event id is acted on once, however many polls, restarts or providers resend it.

One Redis key per event id in two states, as the delivery markers do. Before an event's intents are
published it is *claimed* (``SET NX GET`` with a short lease, the value naming the claiming
process); once the broker confirmed them it is marked *done* (a TTL longer than a game, so the set of
remembered ids stays bounded). An event that failed is held only by its claim: the process that
made it takes it back on its next attempt, and any other process once the lease has run out, so a
failed publish never turns the retry into a "duplicate". Keys written before the two states existed
hold ``1`` and count as done.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from goalhorn.keys import Keys
from goalhorn.models import GameEvent
from goalhorn.redis_client import Redis

CLAIMED = b"claimed:"
DONE = b"done"
CLAIM_LEASE_S = 60
"""How long a claim holds an event against other processes: longer than publishing an absorb takes."""


@dataclass(slots=True)
class Claims:
    claimed: list[GameEvent] = field(default_factory=list)
    """Claimed by this call: publish their intents, ``mark_done`` those confirmed, then ``release``."""
    done: list[GameEvent] = field(default_factory=list)
    """Acted on before: duplicates."""
    held: list[GameEvent] = field(default_factory=list)
    """Claimed by another attempt still in flight (here or in another process, or dead with its lease
    running): neither new nor done, so try again later."""


class EventDedup:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: int, lease_s: int = CLAIM_LEASE_S) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._lease_ms = lease_s * 1000
        self._token = CLAIMED + uuid.uuid4().hex.encode()
        self._in_flight: set[str] = set()

    async def claim(self, events: Sequence[GameEvent]) -> Claims:
        """Sort ``events`` into claimed, done and held, in order, in one round trip; an id repeated
        within ``events`` is a duplicate of its first occurrence."""
        claims = Claims()
        ask: dict[str, GameEvent] = {}
        for event in events:
            if event.event_id in self._in_flight:
                claims.held.append(event)
            elif event.event_id in ask:
                claims.done.append(event)
            else:
                ask[event.event_id] = event
        if not ask:
            return claims
        pipe = self._redis.pipeline(transaction=False)
        for event in ask.values():
            pipe.set(self._keys.event_seen(event.event_id), self._token, nx=True, get=True, px=self._lease_ms)
        previous: list[bytes | None] = await pipe.execute()
        retaken: list[str] = []
        for event, old in zip(ask.values(), previous, strict=True):
            if old is None or old == self._token:
                claims.claimed.append(event)
                if old is not None:  # this process's own failed attempt: its lease starts again
                    retaken.append(self._keys.event_seen(event.event_id))
            elif old.startswith(CLAIMED):
                claims.held.append(event)
            else:
                claims.done.append(event)
        if retaken:
            pipe = self._redis.pipeline(transaction=False)
            for key in retaken:
                pipe.pexpire(key, self._lease_ms)
            await pipe.execute()
        self._in_flight.update(event.event_id for event in claims.claimed)
        return claims

    async def mark_done(self, events: Sequence[GameEvent]) -> None:
        """Remember ``events`` as acted on (their intents are confirmed), for the dedup TTL."""
        if not events:
            return
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            pipe.set(self._keys.event_seen(event.event_id), DONE, ex=self._ttl_s)
        await pipe.execute()

    def release(self, events: Sequence[GameEvent]) -> None:
        """End this process's attempt at claimed ``events``, done or not (always, once it is over):
        those not marked done can be claimed again at once here, and elsewhere when their lease
        runs out."""
        self._in_flight.difference_update(event.event_id for event in events)
