"""What the expander reads per chunk of users: their stored devices and the preference records it asks
for.

Members the Bloom filter rules out (on the defaults, new to the intent) are read in bulk: one HMGET
per bucket for their device records, which come back without their ids. In the same round trip, the
others' preference records (one HMGET per bucket); the devices of those their preferences let
through are read with a later chunk, in the same HMGETs, so no device record of a muted or quiet
user is read and no round trip is added. User ids stay
the bytes Redis returned and device records stay unparsed: the expander copies them into delivery
batches (``goalhorn.segmenter.batches``).

Redis spends longer on these HMGETs than on the SSCAN itself (0.17 s against 0.12 s of server time
for 200,000 members: lookups in SSCAN order hop around memory), so nothing is moved onto its thread:
a Lua script joining a bucket's records server-side took 0.68 s of it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from goalhorn.keys import Keys
from goalhorn.preferences.hashing import user_hash, user_hashes
from goalhorn.redis_client import Redis, hmget_many

if TYPE_CHECKING:  # numpy is imported by the one reader using it (the expander's): workers read devices without it
    import numpy as np
    import numpy.typing as npt


def bucket_of(user_id: str | bytes, buckets: int) -> int:
    """The bucket holding a user's devices and preferences: the low half of its xxh3-128, modulo."""
    return user_hash(user_id.encode() if isinstance(user_id, str) else user_id)[0] % buckets


U = TypeVar("U", str, bytes)


def group_by_bucket(user_ids: Iterable[U], buckets: int) -> dict[int, list[U]]:
    """User ids grouped by the bucket that holds them."""
    grouped: dict[int, list[U]] = defaultdict(list)
    for user_id in user_ids:
        grouped[bucket_of(user_id, buckets)].append(user_id)
    return grouped


@dataclass(slots=True)
class ChunkRecords:
    """What one read of a chunk returns. Members read in bulk: their device records (None: no
    devices), per bucket, without their ids. Members marked to be looked at one by one: their ids and
    preference records (None: on the defaults), in the same order, with their buckets; their devices
    are read with a later chunk (``carried``), once their preferences let them through."""

    bulk: list[list[bytes | None]]
    users: list[bytes]
    preferences: list[bytes | None]
    buckets: list[int]
    """The bucket of each of ``users``."""
    carried: list[bytes | None]
    """The device records of the ``carried`` users asked for, in their order."""


class ChunkReader:
    def __init__(self, redis: Redis, keys: Keys, *, buckets: int) -> None:
        self._redis = redis
        self._keys = keys
        self._buckets = buckets

    async def read(
        self,
        user_ids: Sequence[bytes],
        marked: Sequence[bool] | npt.NDArray[np.bool_],
        carried: Sequence[tuple[bytes, int]] = (),
        hashes: npt.NDArray[np.uint64] | None = None,
    ) -> ChunkRecords:
        """Device records of the unmarked ``user_ids`` and of the ``carried`` ``(user id, bucket)``s,
        and preference records of the marked ``user_ids``: one round trip of one HMGET per bucket and
        kind. ``hashes``: the ``user_hashes`` of ``user_ids``, if already computed."""
        import numpy as np

        if not user_ids and not carried:
            return ChunkRecords([], [], [], [], [])
        buckets = self._buckets
        extra: dict[int, list[int]] = defaultdict(list)  # bucket -> positions in carried
        for position, (_, bucket) in enumerate(carried):
            extra[bucket].append(position)
        # Sort the members by (bucket, marked) in numpy: no per-member Python work.
        if hashes is None:
            hashes = user_hashes(user_ids)
        codes = (hashes[:, 0] % np.uint64(buckets)).astype(np.int64)
        groups = codes * 2 + np.asarray(marked, dtype=np.int64)
        order = np.argsort(groups, kind="stable").tolist()
        ordered = [user_ids[i] for i in order]
        ends = np.cumsum(np.bincount(groups, minlength=2 * buckets)).tolist()
        starts = [0, *ends[:-1]]
        commands: list[tuple[str, list[bytes]]] = []
        looked_at: list[bytes] = []
        looked_at_buckets: list[int] = []
        layout: list[tuple[int, list[int]]] = []  # per device command: bulk members, carried positions
        for bucket in range(buckets):
            start, end = starts[2 * bucket], ends[2 * bucket]
            more = extra.get(bucket, [])
            if end > start or more:
                fields = ordered[start:end] + [carried[position][0] for position in more]
                commands.append((self._keys.device_bucket(bucket), fields))
                layout.append((end - start, more))
        bulk_commands = len(commands)
        for bucket in range(buckets):
            start, end = starts[2 * bucket + 1], ends[2 * bucket + 1]
            if end > start:
                users = ordered[start:end]
                looked_at += users
                looked_at_buckets += [bucket] * len(users)
                commands.append((self._keys.preference_bucket(bucket), users))
        rows = await hmget_many(self._redis, commands)
        bulk: list[list[bytes | None]] = []
        carried_devices: list[bytes | None] = [None] * len(carried)
        for (size, more), row in zip(layout, rows, strict=False):
            if more:
                bulk.append(row[:size])
                for position, raw in zip(more, row[size:], strict=True):
                    carried_devices[position] = raw
            else:
                bulk.append(row)
        preferences: list[bytes | None] = []
        for row in rows[bulk_commands:]:
            preferences += row
        return ChunkRecords(bulk, looked_at, preferences, looked_at_buckets, carried_devices)

    async def devices(self, user_ids: Sequence[bytes]) -> list[bytes | None]:
        """The device records of ``user_ids``, in their order (one HMGET per bucket)."""
        grouped = group_by_bucket(user_ids, self._buckets)
        rows = await hmget_many(self._redis, [(self._keys.device_bucket(b), users) for b, users in grouped.items()])
        found: dict[bytes, bytes | None] = {}
        for users, row in zip(grouped.values(), rows, strict=True):
            found.update(zip(users, row, strict=True))
        return [found[user_id] for user_id in user_ids]
