"""What the expander reads per chunk of users: their devices and the preference records it asks for.

One HMGET per bucket for the devices and one per bucket for the preference records the Bloom filter
could not rule out, all in one pipelined round trip; the device lists of the whole chunk are then
parsed and validated in one pydantic-core call, which is the dominant client-side cost. (A per-bucket
Lua script returning pre-joined JSON was measured slower: it moves the per-user work onto the single
Redis thread.)
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import cast

from pydantic import TypeAdapter

from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.redis_client import Redis

_DEVICE_LISTS = TypeAdapter(list[list[Device]])


def bucket_of(user_id: str, buckets: int) -> int:
    """The bucket holding a user's devices and preferences."""
    return zlib.crc32(user_id.encode()) % buckets


def group_by_bucket(user_ids: Iterable[str], buckets: int) -> dict[int, list[str]]:
    """User ids grouped by the bucket that holds them."""
    grouped: dict[int, list[str]] = defaultdict(list)
    for user_id in user_ids:
        grouped[bucket_of(user_id, buckets)].append(user_id)
    return grouped


class ChunkRecords:
    """Devices (users without any are absent) and raw preference records (only those that exist)."""

    __slots__ = ("devices", "preferences")

    def __init__(self, devices: dict[str, list[Device]], preferences: dict[str, bytes]) -> None:
        self.devices = devices
        self.preferences = preferences


class ChunkReader:
    def __init__(self, redis: Redis, keys: Keys, *, buckets: int) -> None:
        self._redis = redis
        self._keys = keys
        self._buckets = buckets

    async def read(self, user_ids: Sequence[str], with_preferences: Sequence[str]) -> ChunkRecords:
        """Devices of ``user_ids`` and preference records of ``with_preferences``, in one round trip."""
        device_groups = group_by_bucket(user_ids, self._buckets)
        pref_groups = group_by_bucket(with_preferences, self._buckets)
        pipe = self._redis.pipeline(transaction=False)
        for bucket, users in device_groups.items():
            pipe.hmget(self._keys.device_bucket(bucket), users)
        for bucket, users in pref_groups.items():
            pipe.hmget(self._keys.preference_bucket(bucket), users)
        rows = cast(list[list[bytes | None]], await pipe.execute())
        owners: list[str] = []
        raws: list[bytes] = []
        for users, row in zip(device_groups.values(), rows, strict=False):
            for user_id, raw in zip(users, row, strict=True):
                if raw is not None:
                    owners.append(user_id)
                    raws.append(raw)
        listed = _DEVICE_LISTS.validate_json(b"[" + b",".join(raws) + b"]") if raws else []
        devices = {user_id: found for user_id, found in zip(owners, listed, strict=True) if found}
        preferences: dict[str, bytes] = {}
        for users, row in zip(pref_groups.values(), rows[len(device_groups) :], strict=True):
            for user_id, raw in zip(users, row, strict=True):
                if raw is not None:
                    preferences[user_id] = raw
        return ChunkRecords(devices, preferences)
