"""Kill switches: turn an endpoint off without a restart (a flag in Redis, seen by every API process
within a second).

A switch is named by a route's group (its tag: ``users``, ``games``, ``streams``, ``webhooks``) or
by one route's name (``get_game``, ``import_users``, as ``/openapi.json`` lists them as
``operationId`` prefixes); while it is set, those routes answer 503 with the reason given.
``PUT /v1/admin/switches/{name}`` (admin scope) sets one, ``DELETE`` clears it.
"""

from __future__ import annotations

import time

from goalhorn.keys import Keys
from goalhorn.redis_client import Redis

REFRESH_S = 1.0


class KillSwitches:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.kill_switches()
        self._cached: dict[str, str] = {}
        self._read_at = -REFRESH_S

    async def current(self) -> dict[str, str]:
        """Switches set (name -> reason), read at most once a second per process."""
        if time.monotonic() - self._read_at >= REFRESH_S:
            raw = await self._redis.hgetall(self._key)
            self._cached = {_text(k): _text(v) for k, v in raw.items()}
            self._read_at = time.monotonic()
        return self._cached

    async def blocking(self, names: list[str]) -> tuple[str, str] | None:
        """The first of ``names`` switched off, with its reason."""
        switches = await self.current()
        for name in names:
            if name in switches:
                return name, switches[name]
        return None

    async def set(self, name: str, reason: str) -> None:
        await self._redis.hset(self._key, name, reason)
        self._read_at = -REFRESH_S

    async def clear(self, name: str) -> bool:
        removed = bool(await self._redis.hdel(self._key, name))
        self._read_at = -REFRESH_S
        return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
