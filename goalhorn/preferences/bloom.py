"""A Bloom filter of the users with any non-default preference, persisted in Redis and versioned.

It is a prefilter only: the expander skips the preference lookup of every user the filter rules out
and confirms every "maybe" exactly against the preference records. Correctness never depends on the
filter being fresh: every preference write adds the user to a pending SET, which readers treat as
"maybe" too, and a rebuild folds the pending users in, sized to the population it was built from
(pybloom-live's default capacity would silently raise its error rate as users are added). The
expander starts a rebuild in the background once the pending set grows past a limit.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from pybloom_live import BloomFilter

from goalhorn.keys import Keys
from goalhorn.redis_client import Redis

MIN_CAPACITY = 1024
HEADROOM = 1.25
OLD_VERSION_TTL_S = 300
REBUILD_LOCK_S = 300


@dataclass(slots=True)
class PreferenceFilter:
    """A reader's snapshot: "maybe has preferences" is the Bloom filter or the pending set."""

    version: int
    bloom: BloomFilter | None
    pending: set[str] = field(default_factory=set)

    def maybe(self, user_id: str) -> bool:
        return self.bloom is None or user_id in self.pending or user_id in self.bloom

    def maybes(self, user_ids: Iterable[str]) -> list[str]:
        if self.bloom is None:
            return list(user_ids)
        bloom, pending = self.bloom, self.pending
        return [u for u in user_ids if u in pending or u in bloom]


class PreferenceBloom:
    """Builds, publishes and reads the filter; readers cache the deserialized filter per version."""

    def __init__(self, redis: Redis, keys: Keys, *, buckets: int, error_rate: float = 0.01) -> None:
        self._redis = redis
        self._keys = keys
        self._buckets = buckets
        self._error_rate = error_rate
        self._cached: tuple[int, BloomFilter] | None = None

    async def rebuild(self) -> int:
        """Build a filter from every preference record and publish it; returns its version."""
        pending = cast(set[bytes], await self._redis.smembers(self._keys.bloom_pending()))
        pipe = self._redis.pipeline(transaction=False)
        for bucket in range(self._buckets):
            pipe.hlen(self._keys.preference_bucket(bucket))
        population = sum(cast(list[int], await pipe.execute()))
        bloom = BloomFilter(capacity=max(MIN_CAPACITY, int(population * HEADROOM)), error_rate=self._error_rate)
        for bucket in range(self._buckets):
            async for user_id, _ in self._redis.hscan_iter(self._keys.preference_bucket(bucket), count=1000):
                bloom.add(cast(bytes, user_id).decode())
        blob = io.BytesIO()
        bloom.tofile(blob)
        version = int(await self._redis.incr(self._keys.bloom_version() + ":next"))
        old = await self._redis.get(self._keys.bloom_version())
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._keys.bloom_blob(version), blob.getvalue())
        pipe.set(self._keys.bloom_version(), version)
        if pending:
            pipe.srem(self._keys.bloom_pending(), *pending)
        if old is not None:
            pipe.expire(self._keys.bloom_blob(int(old)), OLD_VERSION_TTL_S)
        await pipe.execute()
        self._cached = (version, bloom)
        return version

    async def rebuild_if_due(self, snapshot: PreferenceFilter, pending_limit: int) -> bool:
        """Rebuild when ``snapshot`` has at least ``pending_limit`` pending users and no other process is
        rebuilding; True if this call rebuilt."""
        if len(snapshot.pending) < pending_limit:
            return False
        lock = self._keys.bloom_rebuild_lock()
        if not await self._redis.set(lock, "1", nx=True, ex=REBUILD_LOCK_S):
            return False
        try:
            await self.rebuild()
        finally:
            await self._redis.delete(lock)
        return True

    async def snapshot(self) -> PreferenceFilter:
        """The current filter and pending users, in one round trip (plus one to fetch a new version)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._keys.bloom_version())
        pipe.smembers(self._keys.bloom_pending())
        raw_version, raw_pending = await pipe.execute()
        pending = {m.decode() for m in cast(set[bytes], raw_pending)}
        if raw_version is None:
            return PreferenceFilter(0, None, pending)
        version = int(raw_version)
        if self._cached is None or self._cached[0] != version:
            blob = await self._redis.get(self._keys.bloom_blob(version))
            if blob is None:  # superseded and expired between the two reads: no prefilter this time
                return PreferenceFilter(version, None, pending)
            self._cached = (version, BloomFilter.fromfile(io.BytesIO(cast(bytes, blob))))
        return PreferenceFilter(version, self._cached[1], pending)
