"""The subscriber epoch: a token kept beside the subscriber data that vouches for it being whole.

Redis without persistence that restarts comes back empty, and an empty follower set reads exactly
like "nobody follows". So every writer of follower sets, devices or preferences also sets the
namespace's epoch (``SET NX``: the first writer picks it, later ones keep it), and the fanout
remembers the epoch it saw: an epoch that disappeared, or was replaced by another, means the data
it vouched for was lost (``goalhorn.segmenter.epoch_watch``).

The value says where it came from:

- ``<hex>``: written with subscriber data;
- ``lost:<hex>``: a fanout process found that the data of epoch ``<hex>`` was lost. Writers leave
  it in place (``NX``), so every fanout process, also one started later, holds its intents until
- ``restored:<hex>``: an operator said the data is back (``goalhorn subscribers restored``, after
  re-importing the subscribers); every fanout process takes it as the new epoch.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from redis.asyncio.client import Pipeline

from goalhorn.keys import Keys
from goalhorn.redis_client import Redis

LOST = "lost:"
RESTORED = "restored:"

# KEYS: the epoch; ARGV: the value read before (empty: none), the value to write. Compare and set,
# so a restore written meanwhile is not overwritten by a stale "lost".
_REPLACE = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Epoch:
    value: str

    @property
    def lost(self) -> bool:
        return self.value.startswith(LOST)

    @property
    def restored(self) -> bool:
        return self.value.startswith(RESTORED)

    def __str__(self) -> str:
        return self.value


def new_token() -> str:
    return secrets.token_hex(8)


class SubscriberEpoch:
    """Read and write a namespace's subscriber epoch."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.subscriber_epoch()
        self._replace = redis.register_script(_REPLACE)

    def stamp(self, pipe: Pipeline) -> None:
        """Queue the epoch's ``SET NX`` on a (non-transactional) pipeline, ahead of a data write."""
        pipe.set(self._key, new_token(), nx=True)

    async def ensure(self) -> None:
        """Set the epoch unless it is set (one round trip): call before writing subscriber data."""
        await self._redis.set(self._key, new_token(), nx=True)

    async def read(self) -> Epoch | None:
        raw = await self._redis.get(self._key)
        if raw is None:
            return None
        return Epoch(raw.decode() if isinstance(raw, bytes) else str(raw))

    async def mark_lost(self, seen: Epoch, current: Epoch | None) -> bool:
        """Record that the data of ``seen`` was lost, if the epoch still reads ``current``."""
        token = seen.value.split(":", 1)[-1]
        done = await self._replace(keys=[self._key], args=[current.value if current else "", LOST + token])
        return bool(done)

    async def restore(self) -> Epoch:
        """Declare the stored subscriber data whole again: a new epoch every fanout process accepts."""
        epoch = Epoch(RESTORED + new_token())
        await self._redis.set(self._key, epoch.value)
        return epoch
