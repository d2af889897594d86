"""A Bloom filter of the users with any non-default preference, persisted in Redis and versioned.

It is a prefilter only: the expander skips the preference lookup of every user the filter rules out
and confirms every "maybe" exactly against the preference records. Correctness never depends on the
filter being fresh: every preference write adds the user to a pending SET, which readers treat as
"maybe" too, and a rebuild folds the pending users in, sized to the population it was built from
(pybloom-live's default capacity would silently raise its error rate as users are added). The
expander starts a rebuild in the background once the pending set grows past a limit.

pybloom-live sizes the filter (slices and bits per slice from capacity and error rate), holds its
bits and serializes it. Its keys are hashed here, with the user ids' xxh3-128
(``goalhorn.preferences.hashing``, which the storage buckets share) and double hashing (``h1 +
i*h2`` per slice, Kirsch and Mitzenmacher 2006), instead of its salted SHA-2, which cost 2.0 µs per
key: the expander probes a whole chunk of members at once with numpy, 0.1 µs per key. The stored
blob starts with a format tag; a filter stored in any other format is not used.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt
from pybloom_live import BloomFilter

from goalhorn.keys import Keys
from goalhorn.preferences.hashing import MASK64, user_hash, user_hashes
from goalhorn.redis_client import Redis

MIN_CAPACITY = 1024
HEADROOM = 1.25
OLD_VERSION_TTL_S = 300
REBUILD_LOCK_S = 300
FORMAT = b"goalhorn-bloom/xxh3-dh/1\n"

log = logging.getLogger(__name__)


class Xxh3BloomFilter(BloomFilter):  # type: ignore[misc]  # pybloom-live is untyped
    """pybloom-live's filter with xxh3 double hashing, and a vectorized probe of many keys."""

    def _setup(self, error_rate: float, num_slices: int, bits_per_slice: int, capacity: int, count: int) -> None:
        super()._setup(error_rate, num_slices, bits_per_slice, capacity, count)
        self.make_hashes = self._positions
        self._packed: npt.NDArray[np.uint8] | None = None

    def _positions(self, key: str | bytes) -> Iterator[int]:
        """The bit of each slice for ``key``, within its slice (pybloom-live adds the slice offsets)."""
        h1, h2 = user_hash(key.encode() if isinstance(key, str) else key)
        h2 |= 1
        for i in range(self.num_slices):
            yield ((h1 + i * h2) & MASK64) % self.bits_per_slice

    def add(self, key: str | bytes, skip_check: bool = False) -> bool:
        self._packed = None
        return bool(super().add(key, skip_check))

    def contain_many(self, keys: Sequence[bytes]) -> npt.NDArray[np.bool_]:
        """``key in self`` for each of ``keys``, in one vectorized pass."""
        return self.contain_hashes(user_hashes(keys))

    def contain_hashes(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """:meth:`contain_many` of the keys with these :func:`user_hashes`."""
        if not len(hashes):
            return np.zeros(0, dtype=np.bool_)
        if self._packed is None:
            self._packed = np.frombuffer(self.bitarray.tobytes(), dtype=np.uint8)
        h1, h2 = hashes[:, 0:1], hashes[:, 1:2] | np.uint64(1)
        slices = np.arange(self.num_slices, dtype=np.uint64)
        bits = np.uint64(self.bits_per_slice)
        positions = (h1 + slices * h2) % bits + slices * bits
        hits = (self._packed[positions >> np.uint64(3)] >> (positions & np.uint64(7)).astype(np.uint8)) & 1
        return cast(npt.NDArray[np.bool_], hits.all(axis=1))


@dataclass(slots=True)
class PreferenceFilter:
    """A reader's snapshot: "maybe has preferences" is the Bloom filter or the pending set."""

    version: int
    bloom: Xxh3BloomFilter | None
    pending: set[bytes] = field(default_factory=set)

    def maybe(self, user_id: str) -> bool:
        return bool(self.maybe_many([user_id.encode()])[0])

    def maybe_many(
        self, user_ids: Sequence[bytes], hashes: npt.NDArray[np.uint64] | None = None
    ) -> npt.NDArray[np.bool_]:
        """Whether each of ``user_ids`` may have preferences (False: it certainly has none);
        ``hashes``, their :func:`user_hashes` if already computed."""
        if self.bloom is None:
            return np.ones(len(user_ids), dtype=np.bool_)
        found = self.bloom.contain_hashes(user_hashes(user_ids) if hashes is None else hashes)
        if self.pending:
            pending = self.pending
            found |= np.fromiter((user_id in pending for user_id in user_ids), dtype=np.bool_, count=len(user_ids))
        return found


class PreferenceBloom:
    """Builds, publishes and reads the filter; readers cache the deserialized filter per version."""

    def __init__(self, redis: Redis, keys: Keys, *, buckets: int, error_rate: float = 0.01) -> None:
        self._redis = redis
        self._keys = keys
        self._buckets = buckets
        self._error_rate = error_rate
        self._cached: tuple[int, Xxh3BloomFilter | None] | None = None

    async def rebuild(self) -> int:
        """Build a filter from every preference record and publish it; returns its version."""
        pending = cast(set[bytes], await self._redis.smembers(self._keys.bloom_pending()))
        users: list[bytes] = []  # read first, so the filter is sized to what was read (writes go on meanwhile)
        for bucket in range(self._buckets):
            async for user_id, _ in self._redis.hscan_iter(self._keys.preference_bucket(bucket), count=1000):
                users.append(cast(bytes, user_id))
        bloom = Xxh3BloomFilter(capacity=max(MIN_CAPACITY, int(len(users) * HEADROOM)), error_rate=self._error_rate)
        for user_id in users:
            bloom.add(user_id, skip_check=True)
        blob = io.BytesIO()
        blob.write(FORMAT)
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
        pending = cast(set[bytes], raw_pending)
        if raw_version is None:
            return PreferenceFilter(0, None, pending)
        version = int(raw_version)
        if self._cached is None or self._cached[0] != version:
            blob = await self._redis.get(self._keys.bloom_blob(version))
            if blob is None:  # superseded and expired between the two reads: no prefilter this time
                return PreferenceFilter(version, None, pending)
            self._cached = (version, load_filter(cast(bytes, blob), version))
        return PreferenceFilter(version, self._cached[1], pending)


def load_filter(blob: bytes, version: int) -> Xxh3BloomFilter | None:
    """A stored filter, or None (every user a maybe) when it is in another format or damaged."""
    if not blob.startswith(FORMAT):
        log.warning("Bloom filter v%d is not in format %r: not used until the next rebuild", version, FORMAT)
        return None
    try:
        return cast(Xxh3BloomFilter, Xxh3BloomFilter.fromfile(io.BytesIO(blob[len(FORMAT) :])))
    except (ValueError, struct.error) as exc:  # a truncated header or a bit length mismatch
        log.warning("Bloom filter v%d is damaged (%s): not used until the next rebuild", version, exc)
        return None
