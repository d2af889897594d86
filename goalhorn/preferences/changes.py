"""Which users' follows, devices or preferences changed since FCM topic membership last caught up.

Kept only once topic membership is (``Keys.topics_enabled``; ``goalhorn topics sync`` sets it), so a
deployment without topics pays one small script call per write and stores nothing. Every write of the
store marks its users with a fresh token before and after the write (a reader of the mark then reads
data at least as new as the write, and a writer that dies half-way leaves its users marked); the
topic applier removes a mark only if its token is still the one it read, so a change made while the
user was being applied is applied again. A team whose followers include a marked user is not in
sync (``goalhorn.topics.membership``).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from typing import cast

from redis.asyncio.client import Pipeline

from goalhorn.keys import Keys
from goalhorn.redis_client import Redis

# KEYS: enabled flag, marks hash; ARGV: token, user ids...
_MARK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[1]) end
return #ARGV - 1
"""
# KEYS: marks hash; ARGV: (user id, token) pairs. Removes the marks still holding their token.
_CLEAR = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""


class SubscriberChanges:
    """The marks of users changed since topic membership last caught up with them."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._mark = redis.register_script(_MARK)
        self._clear = redis.register_script(_CLEAR)

    def _args(self, users: Collection[str]) -> tuple[list[str], list[str]]:
        return [self._keys.topics_enabled(), self._keys.topics_changed()], [secrets.token_hex(6), *users]

    def queue(self, pipe: Pipeline, users: Collection[str]) -> None:
        """Mark ``users`` as part of a (non-transactional) pipeline."""
        if users:
            keys, args = self._args(users)
            pipe.eval(_MARK, len(keys), *keys, *args)

    async def mark(self, users: Collection[str]) -> None:
        if users:
            keys, args = self._args(users)
            await self._mark(keys=keys, args=args)

    async def enable(self) -> None:
        await self._redis.set(self._keys.topics_enabled(), b"1")

    async def enabled(self) -> bool:
        return bool(await self._redis.exists(self._keys.topics_enabled()))

    async def pending(self, limit: int = 10_000) -> dict[str, str]:
        """Up to ``limit`` marked users with their tokens."""
        out: dict[str, str] = {}
        async for user, token in self._redis.hscan_iter(self._keys.topics_changed(), count=1000):
            out[_text(user)] = _text(token)
            if len(out) >= limit:
                break
        return out

    async def count(self) -> int:
        return int(await self._redis.hlen(self._keys.topics_changed()))

    async def clear(self, marks: Mapping[str, str]) -> int:
        """Remove the marks that still hold the tokens given; how many were removed."""
        if not marks:
            return 0
        args = [value for pair in marks.items() for value in pair]
        return cast(int, await self._clear(keys=[self._keys.topics_changed()], args=args))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
