"""What the expander reads per chunk of users: their stored devices and the preference records it
asks for.

One HMGET per bucket for the devices of the whole chunk and one per bucket for the preference
records of the users the Bloom filter could not rule out, all in one pipelined round trip. User ids
stay the bytes Redis returned and device records stay unparsed: the expander copies them into
delivery batches (``goalhorn.segmenter.batches``). (A per-bucket Lua script taking the chunk as one
argument was measured slower: it tripled the Redis thread's time per member, and Redis already
spends as long on the HMGET as on the SSCAN.)
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from goalhorn.keys import Keys
from goalhorn.redis_client import Redis


def bucket_of(user_id: str | bytes, buckets: int) -> int:
    """The bucket holding a user's devices and preferences."""
    return zlib.crc32(user_id.encode() if isinstance(user_id, str) else user_id) % buckets


U = TypeVar("U", str, bytes)


def group_by_bucket(user_ids: Iterable[U], buckets: int) -> dict[int, list[U]]:
    """User ids grouped by the bucket that holds them."""
    grouped: dict[int, list[U]] = defaultdict(list)
    for user_id in user_ids:
        grouped[bucket_of(user_id, buckets)].append(user_id)
    return grouped


@dataclass(slots=True)
class ChunkRecords:
    """Per bucket, its users and their stored device records (None: no devices), in the same order;
    and the preference records of the asked-for users that have one."""

    buckets: list[tuple[list[bytes], list[bytes | None]]]
    preferences: dict[bytes, bytes]


class ChunkReader:
    def __init__(self, redis: Redis, keys: Keys, *, buckets: int) -> None:
        self._redis = redis
        self._keys = keys
        self._buckets = buckets

    async def read(self, user_ids: Sequence[bytes], maybe: Sequence[bool]) -> ChunkRecords:
        """Device records of ``user_ids`` and the preference records of those with ``maybe`` set, in
        one round trip."""
        buckets = self._buckets
        device_groups: dict[int, list[bytes]] = defaultdict(list)
        pref_groups: dict[int, list[bytes]] = defaultdict(list)
        crc32 = zlib.crc32
        for user_id, asked in zip(user_ids, maybe, strict=True):
            bucket = crc32(user_id) % buckets
            device_groups[bucket].append(user_id)
            if asked:
                pref_groups[bucket].append(user_id)
        pipe = self._redis.pipeline(transaction=False)
        for bucket, users in device_groups.items():
            pipe.hmget(self._keys.device_bucket(bucket), users)
        for bucket, users in pref_groups.items():
            pipe.hmget(self._keys.preference_bucket(bucket), users)
        rows = cast(list[list[bytes | None]], await pipe.execute())
        preferences: dict[bytes, bytes] = {}
        for users, row in zip(pref_groups.values(), rows[len(device_groups) :], strict=True):
            for user_id, raw in zip(users, row, strict=True):
                if raw is not None:
                    preferences[user_id] = raw
        return ChunkRecords(list(zip(device_groups.values(), rows, strict=False)), preferences)
