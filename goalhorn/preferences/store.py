"""Read and write users' devices, follows and preferences in Redis.

Layout (names in ``goalhorn.keys``): a SET of user ids per followed team, watched match or market and
followed sport; and, per user, a compact device list and (only when not on the defaults) a compact
preferences record, each in one of ``buckets`` HASHes chosen by a hash of the user id. So the expander
reads the devices and preferences of a whole chunk of users with one call per bucket, in one round
trip, whatever the chunk size (``goalhorn.preferences.reader``). Every preference write also adds the
user to the Bloom filter's pending set, so a filter built before the write can never hide it (see
``goalhorn.preferences.bloom``). Every write of follows, devices or preferences sets the namespace's
subscriber epoch first (``goalhorn.preferences.epoch``), so Redis that lost the data can be told
from an audience that is really empty, and marks its users as changed for FCM topic membership
(``goalhorn.preferences.changes``); other writers of these keys go through this store.

Every write that reads a record to change it (devices, last-seen times, mutes, opt-ins) is one
optimistic transaction: ``WATCH`` the hashes it reads, compute, ``MULTI``/``EXEC``, and start over
when another writer changed one of them in between. So any number of processes (API replicas,
delivery workers pruning tokens, an import) may edit the same user at once and no update is lost:
the result is that of some serial order of the edits.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from redis.exceptions import WatchError

from goalhorn.errors import ConfigError, StoreError
from goalhorn.keys import Keys
from goalhorn.models import Device, utcnow
from goalhorn.preferences.changes import SubscriberChanges
from goalhorn.preferences.epoch import SubscriberEpoch
from goalhorn.preferences.model import (
    DEFAULT_PREFERENCES,
    Preferences,
    decode_devices,
    decode_last_seen,
    encode_devices,
    encode_last_seen,
)
from goalhorn.preferences.quiet_hours import zone
from goalhorn.preferences.reader import ChunkReader, bucket_of, group_by_bucket
from goalhorn.redis_client import Redis

Change = Callable[[str, bytes | None], bytes | None]

MAX_ATTEMPTS = 1000
"""Attempts of one optimistic transaction before it gives up with StoreError (each failed attempt means
another writer's transaction on the same hash committed, so the system as a whole made progress)."""


# KEYS: the user's device bucket, last-seen bucket; ARGV: user id, device id, the device's line,
# most devices, seen at (epoch s). Appends a device the user does not have yet, in one step (no
# WATCH conflicts with the other users of the bucket): 1; -1 if the user has it (the caller
# replaces it, keeping when it was added); -2 if the user has the most devices already.
_ADD_NEW_DEVICE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local count = 0
if raw then
  for line in string.gmatch(raw, '[^\\n]+') do
    count = count + 1
    if cjson.decode(line).device_id == ARGV[2] then
      return -1
    end
  end
end
if count >= tonumber(ARGV[4]) then
  return -2
end
if raw then
  raw = raw .. '\\n' .. ARGV[3]
else
  raw = ARGV[3]
end
redis.call('HSET', KEYS[1], ARGV[1], raw)
local seen = redis.call('HGET', KEYS[2], ARGV[1])
local times = {}
if seen then
  times = cjson.decode(seen)
end
times[ARGV[2]] = tonumber(ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(times))
return 1
"""


def grouped_users(grouped: Mapping[int, Sequence[str]]) -> Iterable[str]:
    return (user for users in grouped.values() for user in users)


class DeviceLimit(StoreError):
    """A user has as many devices as allowed."""


def check_user_id(user_id: str) -> str:
    """A user id goalhorn can store: non-empty, printable, without whitespace (ids end up in keys,
    logs and CLI output)."""
    if not user_id or not user_id.isprintable() or any(c.isspace() for c in user_id):
        raise ConfigError(f"invalid user id {user_id!r}: it must be non-empty, printable and without whitespace")
    return user_id


class PreferenceStore:
    """The subscriber side of goalhorn, over one Redis."""

    def __init__(self, redis: Redis, keys: Keys, *, buckets: int = 16) -> None:
        self._redis = redis
        self._keys = keys
        self.buckets = buckets
        self._add_new_device = redis.register_script(_ADD_NEW_DEVICE)
        self.epoch = SubscriberEpoch(redis, keys)
        self.changes = SubscriberChanges(redis, keys)
        """Marks of the users whose data changed, for FCM topic membership (``goalhorn.preferences.changes``)."""

    # --- devices ------------------------------------------------------------------------------
    async def _rewrite(self, bucket_key: Callable[[int], str], user_ids: Iterable[str], change: Change) -> None:
        """Read each user's value in ``bucket_key`` buckets, apply ``change``, write back (None deletes),
        atomically (see :meth:`_rewrite_many`)."""
        await self._rewrite_many(user_ids, [(bucket_key, change)])

    async def _rewrite_many(
        self, user_ids: Iterable[str], rewrites: Sequence[tuple[Callable[[int], str], Change]]
    ) -> None:
        """For each ``(bucket_key, change)``: read each user's value in its bucket, apply ``change``,
        write back (None deletes), all in one transaction: the hashes read are WATCHed and the whole
        rewrite is retried if one changed before EXEC. A change may run several times, so it must not
        depend on what an earlier run did; an exception it raises aborts the rewrite (nothing written).
        (One user's hashes share a hash tag; a rewrite of many users' spans several on Redis Cluster.)"""
        grouped = group_by_bucket(set(user_ids), self.buckets)
        plan = [
            (bucket_key(bucket), users, change) for bucket_key, change in rewrites for bucket, users in grouped.items()
        ]
        if not plan:
            return
        await self.epoch.ensure()  # its own slot on Redis Cluster: not inside the transaction
        marked = [] if all(key == self._keys.last_seen_bucket for key, _ in rewrites) else list(grouped_users(grouped))
        await self.changes.mark(marked)
        async with self._redis.pipeline(transaction=True) as pipe:
            for attempt in range(MAX_ATTEMPTS):
                try:
                    await pipe.watch(*(key for key, _, _ in plan))
                    rows = [cast(list[bytes | None], await pipe.hmget(key, users)) for key, users, _ in plan]
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for (key, users, change), raws in zip(plan, rows, strict=True):
                        updates: dict[str, bytes] = {}
                        for user_id, raw in zip(users, raws, strict=True):
                            new = change(user_id, raw)
                            if new is None and raw is not None:
                                pipe.hdel(key, user_id)
                            elif new is not None and new != raw:
                                updates[user_id] = new
                        if updates:
                            pipe.hset(key, mapping=cast(dict[Any, Any], updates))
                    await pipe.execute()
                    await self.changes.mark(marked)
                    return
                except WatchError:
                    await pipe.reset()  # type: ignore[no-untyped-call]
                    # Jittered, growing pause: writers that collided do not collide again in lockstep.
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.0005 * (attempt + 1))))
        raise StoreError(f"gave up rewriting {sorted(k for k, _, _ in plan)} after {MAX_ATTEMPTS} conflicting attempts")

    async def add_devices(self, devices: Iterable[Device], now: datetime | None = None) -> int:
        """Register (or replace) devices, stamping ``added_at`` on new ones and marking them seen now;
        returns how many."""
        now = now or utcnow()
        per_user: dict[str, list[Device]] = defaultdict(list)
        for device in devices:
            per_user[check_user_id(device.user_id)].append(device)

        def change(user_id: str, raw: bytes | None) -> bytes:
            current = {d.device_id: d for d in decode_devices(raw)} if raw else {}
            for device in per_user[user_id]:
                old = current.get(device.device_id)
                added = device.added_at or (old.added_at if old else None) or now
                current[device.device_id] = device.model_copy(update={"added_at": added})
            return encode_devices(list(current.values()))

        def seen(user_id: str, raw: bytes | None) -> bytes:
            times = decode_last_seen(raw) if raw else {}
            times.update(dict.fromkeys((d.device_id for d in per_user[user_id]), now))
            return encode_last_seen(times)

        await self._rewrite_many(per_user, [(self._keys.device_bucket, change), (self._keys.last_seen_bucket, seen)])
        return sum(len(v) for v in per_user.values())

    async def register_device(self, device: Device, *, max_devices: int, now: datetime | None = None) -> bool:
        """Add (or replace) one device of its user, stamped and marked seen as :meth:`add_devices` does,
        unless the user has ``max_devices`` others already (:class:`DeviceLimit`); True when it is
        new. The check and the write are one atomic step, so concurrent registrations cannot pass
        the limit together: a new device is appended by one script (no WATCH conflicts with the
        bucket's other users); a known one is replaced by a transaction that keeps its ``added_at``."""
        now = now or utcnow()
        user = check_user_id(device.user_id)
        bucket = bucket_of(user, self.buckets)
        line = device.model_copy(update={"added_at": device.added_at or now}).to_json()
        await self.epoch.ensure()
        await self.changes.mark([user])
        outcome = await self._add_new_device(
            keys=[self._keys.device_bucket(bucket), self._keys.last_seen_bucket(bucket)],
            args=[user, device.device_id, line, max_devices, int(now.timestamp())],
        )
        if outcome == 1:
            await self.changes.mark([user])
            return True
        if outcome == -2:
            raise DeviceLimit(f"a user has at most {max_devices} devices")
        created = False

        def change(user_id: str, raw: bytes | None) -> bytes:
            nonlocal created
            current = {d.device_id: d for d in decode_devices(raw)} if raw else {}
            old = current.get(device.device_id)
            created = old is None
            if created and len(current) >= max_devices:
                raise DeviceLimit(f"a user has at most {max_devices} devices")
            added = device.added_at or (old.added_at if old else None) or now
            current[device.device_id] = device.model_copy(update={"added_at": added})
            return encode_devices(list(current.values()))

        def seen(user_id: str, raw: bytes | None) -> bytes:
            times = decode_last_seen(raw) if raw else {}
            times[device.device_id] = now
            return encode_last_seen(times)

        await self._rewrite_many([user], [(self._keys.device_bucket, change), (self._keys.last_seen_bucket, seen)])
        return created

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        """Forget a device (e.g. its token was unregistered); True if it existed."""
        found = False

        def change(uid: str, raw: bytes | None) -> bytes | None:
            nonlocal found
            devices = decode_devices(raw) if raw else []
            kept = [d for d in devices if d.device_id != device_id]
            found = len(kept) != len(devices)
            return encode_devices(kept) if kept else None

        def unseen(uid: str, raw: bytes | None) -> bytes | None:
            times = decode_last_seen(raw) if raw else {}
            times.pop(device_id, None)
            return encode_last_seen(times) if times else None

        await self._rewrite(self._keys.device_bucket, [user_id], change)
        await self._rewrite(self._keys.last_seen_bucket, [user_id], unseen)
        return found

    async def change_device(self, user_id: str, device_id: str, change: Callable[[Device], Device]) -> Device | None:
        """Replace one device by ``change(device)`` atomically (``change`` may run more than once);
        the result, or None when the user has no such device."""
        result: Device | None = None

        def rewrite(uid: str, raw: bytes | None) -> bytes | None:
            nonlocal result
            devices = decode_devices(raw) if raw else []
            result = None
            for n, device in enumerate(devices):
                if device.device_id == device_id:
                    result = devices[n] = change(device)
            return encode_devices(devices) if devices else None

        await self._rewrite(self._keys.device_bucket, [check_user_id(user_id)], rewrite)
        return result

    async def touch_device(self, user_id: str, device_id: str, at: datetime | None = None) -> bool:
        """Record that a device was seen (the app opened); False if it is not registered."""
        if not any(d.device_id == device_id for d in await self.devices_of(user_id)):
            return False

        def seen(uid: str, raw: bytes | None) -> bytes:
            times = decode_last_seen(raw) if raw else {}
            times[device_id] = at or utcnow()
            return encode_last_seen(times)

        await self._rewrite(self._keys.last_seen_bucket, [user_id], seen)
        return True

    async def remove_user(self, user_id: str) -> bool:
        """Forget a user's devices, last-seen times and preferences (their follows are in the follower
        sets, which the caller knows); True if they had devices or preferences."""
        bucket = bucket_of(user_id, self.buckets)
        await self.epoch.ensure()
        await self._redis.sadd(self._keys.bloom_pending(), user_id)
        await self.changes.mark([user_id])
        pipe = self._redis.pipeline(transaction=True)  # one hash tag: the user's bucket
        pipe.hdel(self._keys.device_bucket(bucket), user_id)
        pipe.hdel(self._keys.last_seen_bucket(bucket), user_id)
        pipe.hdel(self._keys.preference_bucket(bucket), user_id)
        removed = await pipe.execute()
        await self.changes.mark([user_id])
        return bool(removed[0] or removed[2])

    async def devices_of(self, user_id: str) -> list[Device]:
        raw = await self._redis.hget(self._keys.device_bucket(bucket_of(user_id, self.buckets)), user_id)
        return decode_devices(cast(bytes, raw)) if raw else []

    async def devices_of_many(self, user_ids: Sequence[str]) -> list[list[Device]]:
        """Each user's devices, in the order of ``user_ids``, in one round trip per bucket."""
        wanted = [user_id.encode() for user_id in user_ids]
        raws = await ChunkReader(self._redis, self._keys, buckets=self.buckets).devices(wanted)
        return [decode_devices(raw) if raw else [] for raw in raws]

    async def last_seen(self, user_id: str) -> dict[str, datetime]:
        raw = await self._redis.hget(self._keys.last_seen_bucket(bucket_of(user_id, self.buckets)), user_id)
        return decode_last_seen(raw) if raw else {}

    # --- follows ------------------------------------------------------------------------------
    async def _add_members(self, key: Callable[[str], str], pairs: Iterable[tuple[str, str]]) -> None:
        members: dict[str, list[str]] = defaultdict(list)
        for user_id, target in pairs:
            members[key(target)].append(check_user_id(user_id))
        if members:
            pipe = self._redis.pipeline(transaction=False)
            self.epoch.stamp(pipe)
            for set_key, users in members.items():
                pipe.sadd(set_key, *users)
            self.changes.queue(pipe, {user for users in members.values() for user in users})
            await pipe.execute()

    async def leave(self, memberships: Iterable[tuple[str, str]]) -> None:
        """Take users out of follower sets: ``(set key, user id)`` pairs, in one round trip."""
        pairs = list(memberships)
        if pairs:
            pipe = self._redis.pipeline(transaction=False)
            self.epoch.stamp(pipe)
            for set_key, user_id in pairs:
                pipe.srem(set_key, user_id)
            self.changes.queue(pipe, {user_id for _, user_id in pairs})
            await pipe.execute()

    async def follow_teams(self, follows: Iterable[tuple[str, str]]) -> None:
        """Record ``(user_id, team_id)`` follows."""
        await self._add_members(self._keys.team_followers, follows)

    async def unfollow_team(self, user_id: str, team_id: str) -> None:
        await self.leave([(self._keys.team_followers(team_id), user_id)])

    async def watch_matches(self, watches: Iterable[tuple[str, str]]) -> None:
        """Record ``(user_id, game_id)`` watches."""
        await self._add_members(self._keys.match_watchers, watches)

    async def unwatch_match(self, user_id: str, game_id: str) -> None:
        await self.leave([(self._keys.match_watchers(game_id), user_id)])

    async def watch_markets(self, watches: Iterable[tuple[str, str]]) -> None:
        """Record ``(user_id, token_id)`` market watches."""
        await self._add_members(self._keys.market_watchers, watches)

    async def unwatch_market(self, user_id: str, token_id: str) -> None:
        await self.leave([(self._keys.market_watchers(token_id), user_id)])

    async def follow_sports(self, follows: Iterable[tuple[str, str]]) -> None:
        """Record ``(user_id, sport)`` follows of a whole sport."""
        await self._add_members(self._keys.sport_fans, follows)

    async def unfollow_sport(self, user_id: str, sport: str) -> None:
        await self.leave([(self._keys.sport_fans(sport), user_id)])

    # --- preferences --------------------------------------------------------------------------
    async def preferences_of(self, user_id: str) -> Preferences:
        raw = await self._redis.hget(self._keys.preference_bucket(bucket_of(user_id, self.buckets)), user_id)
        return Preferences.decode(raw) if raw else DEFAULT_PREFERENCES

    async def set_preferences(self, preferences: Mapping[str, Preferences]) -> None:
        """Replace users' preferences; a user back on the defaults loses the record altogether.

        ConfigError (and nothing written) when a time zone is unknown."""
        if not preferences:
            return
        for user_id, prefs in preferences.items():
            check_user_id(user_id)
            zone(prefs.time_zone)
        await self.changes.mark(list(preferences))
        pipe = self._redis.pipeline(transaction=False)
        self.epoch.stamp(pipe)
        for bucket, users in group_by_bucket(preferences, self.buckets).items():
            key = self._keys.preference_bucket(bucket)
            custom = {u: preferences[u].encode() for u in users if not preferences[u].is_default()}
            default = [u for u in users if preferences[u].is_default()]
            if custom:
                pipe.hset(key, mapping=cast(dict[Any, Any], custom))
            if default:
                pipe.hdel(key, *default)
        pipe.sadd(self._keys.bloom_pending(), *preferences)
        self.changes.queue(pipe, list(preferences))
        await pipe.execute()

    async def change_preferences(self, user_id: str, change: Callable[[Preferences], Preferences]) -> Preferences:
        """Apply ``change`` to a user's stored preferences atomically (retried if another writer got
        there first, so ``change`` may run more than once); returns the result."""
        check_user_id(user_id)
        result = DEFAULT_PREFERENCES

        def rewrite(uid: str, raw: bytes | None) -> bytes | None:
            nonlocal result
            result = change(Preferences.decode(raw) if raw else DEFAULT_PREFERENCES)
            zone(result.time_zone)
            return None if result.is_default() else result.encode()

        # Pending before the write: a Bloom filter built in between still treats the user as "maybe".
        await self._redis.sadd(self._keys.bloom_pending(), user_id)
        await self._rewrite(self._keys.preference_bucket, [user_id], rewrite)
        return result

    async def update_preferences(self, user_id: str, **changes: Any) -> Preferences:
        """Change some of a user's preferences (fields of ``Preferences``); returns the result."""
        return await self.change_preferences(user_id, lambda prefs: prefs.with_changes(**changes))

    async def mute_team(self, user_id: str, team_id: str) -> Preferences:
        return await self.change_preferences(user_id, lambda p: p.with_changes(muted_teams=p.muted_teams | {team_id}))

    async def unmute_team(self, user_id: str, team_id: str) -> Preferences:
        return await self.change_preferences(user_id, lambda p: p.with_changes(muted_teams=p.muted_teams - {team_id}))

    async def mute_match(self, user_id: str, game_id: str) -> Preferences:
        return await self.change_preferences(
            user_id, lambda p: p.with_changes(muted_matches=p.muted_matches | {game_id})
        )

    async def unmute_match(self, user_id: str, game_id: str) -> Preferences:
        return await self.change_preferences(
            user_id, lambda p: p.with_changes(muted_matches=p.muted_matches - {game_id})
        )

    async def opt_in(self, user_id: str, kind: str) -> Preferences:
        return await self.change_preferences(
            user_id, lambda p: p.with_changes(opted_in=p.opted_in | {kind}, opted_out=p.opted_out - {kind})
        )

    async def opt_out(self, user_id: str, kind: str) -> Preferences:
        return await self.change_preferences(
            user_id, lambda p: p.with_changes(opted_out=p.opted_out | {kind}, opted_in=p.opted_in - {kind})
        )
