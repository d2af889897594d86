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
optimistic compare-and-set: read the users' fields, compute, then one script writes the new values
only if every field read still holds what was read, and answers the current values otherwise, to
compute again. So any number of processes (API replicas, delivery workers pruning tokens, an import)
may edit the same user at once and no update is lost: the result is that of some serial order of the
edits. The check is per field (per user), not per hash: a ``WATCH`` of the bucket hash, as before,
failed whenever any of the bucket's other users (a sixteenth of all users) was written meanwhile, so
concurrent API writes of different users retried each other in a loop (bench api: re-registering a
known device went from 0.04-0.05x of the bare route to 0.15-0.22x, docs/api.md).

A write's bookkeeping (the subscriber epoch, the Bloom filter's pending set, the topic marks before
and after) rides in the same pipelines as the write's reads and its compare-and-set: a non-transactional
pipeline runs its commands in order on one Redis, so the epoch and the first mark are set before the
data changes and the second mark after, as when they were separate round trips, and a registration
of a device is one round trip (it was four; a change of preferences two, it was seven).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

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


# KEYS: the user's device bucket, last-seen bucket; ARGV: user id, device id, the device id as its
# line has it (',"device_id":<JSON string>,'), the device's line up to its added_at, the added_at to
# write (JSON), '1' to keep the stored added_at of a device the user has already, most devices, seen
# at (epoch s). Registers a device in one step (no conflicts with the bucket's other users): 1 when
# new (appended), 0 when the user had it (replaced in place, any duplicate of it dropped), -2
# (nothing written) when it is new and the user has the most devices already. The device's line is
# found by plain searches, not by splitting the record into lines or parsing each as JSON (Redis
# spent ~2.5 us a line on either, 0.1 ms a registration of a user with 40 devices): every line is a
# Device's compact JSON, whose device id comes second, followed by the user id, and whose string
# values escape their quotes, so the needle matches the line of that device and no other.
_REGISTER_DEVICE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local line = ARGV[4] .. ',"added_at":' .. ARGV[5] .. '}'
local at = string.find(raw, ARGV[3], 1, true)
local new = 1
if at then
  local first = at
  while first > 1 and string.byte(raw, first - 1) ~= 10 do
    first = first - 1
  end
  local last = string.find(raw, '\\n', at, true) or #raw + 1
  if ARGV[6] == '1' then
    local old = string.sub(raw, first, last - 1)
    local from = string.find(old, ',"added_at":"', 1, true)
    if from then
      local to = string.find(old, '"', from + 13, true)
      line = ARGV[4] .. ',"added_at":' .. string.sub(old, from + 12, to) .. '}'
    end
  end
  local rest = string.sub(raw, last + 1)
  if string.find(rest, ARGV[3], 1, true) then
    -- the same device listed twice (never written so): keep only its first place
    local kept = {}
    for other in string.gmatch(rest, '[^\\n]+') do
      if not string.find(other, ARGV[3], 1, true) then
        kept[#kept + 1] = other
      end
    end
    rest = table.concat(kept, '\\n')
  end
  local head = string.sub(raw, 1, first - 1)
  if rest == '' then
    raw = head .. line
  else
    raw = head .. line .. '\\n' .. rest
  end
  new = 0
elseif raw == '' then
  raw = line
else
  local lines = 1
  local from = string.find(raw, '\\n', 1, true)
  while from do
    lines = lines + 1
    from = string.find(raw, '\\n', from + 1, true)
  end
  if lines >= tonumber(ARGV[7]) then
    return -2
  end
  raw = raw .. '\\n' .. line
end
redis.call('HSET', KEYS[1], ARGV[1], raw)
local seen = redis.call('HGET', KEYS[2], ARGV[1])
local times = {}
if seen then
  times = cjson.decode(seen)
end
times[ARGV[2]] = tonumber(ARGV[8])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(times))
return new
"""

# KEYS: hashes; ARGV, for each key in turn: how many fields, then a (field, value read, value to
# write) triple per field. A value read is '-' (absent) or '=' and the value; a value to write is
# '-' (delete), '.' (leave it) or '=' and the value. Writes them all if every field still holds what
# was read (1); else writes nothing and answers {0, the current value of every field in order}.
_COMPARE_AND_SET = """
local at = 1
local stale = false
local current = {0}
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, n do
    local value = redis.call('HGET', KEYS[k], ARGV[at])
    if value then
      if ARGV[at + 1] ~= '=' .. value then
        stale = true
      end
    elseif ARGV[at + 1] ~= '-' then
      stale = true
    end
    current[#current + 1] = value
    at = at + 3
  end
end
if stale then
  return current
end
at = 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, n do
    local new = ARGV[at + 2]
    local how = string.sub(new, 1, 1)
    if how == '=' then
      redis.call('HSET', KEYS[k], ARGV[at], string.sub(new, 2))
    elseif how == '-' then
      redis.call('HDEL', KEYS[k], ARGV[at])
    end
    at = at + 3
  end
end
return 1
"""

# KEYS: the user's device, last-seen and preference buckets (one hash tag); ARGV: user id. Forgets
# the user in all three at once: 1 if they had devices or preferences.
_REMOVE_USER = """
local devices = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local preferences = redis.call('HDEL', KEYS[3], ARGV[1])
if devices + preferences > 0 then
  return 1
end
return 0
"""

_DEVICE_ID, _USER_ID, _ADDED_AT = b',"device_id":', b',"user_id":', b',"added_at":'


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
        self.epoch = SubscriberEpoch(redis, keys)
        self.changes = SubscriberChanges(redis, keys)
        """Marks of the users whose data changed, for FCM topic membership (``goalhorn.preferences.changes``)."""

    # --- devices ------------------------------------------------------------------------------
    async def _rewrite(self, bucket_key: Callable[[int], str], user_ids: Iterable[str], change: Change) -> None:
        """Read each user's value in ``bucket_key`` buckets, apply ``change``, write back (None deletes),
        atomically (see :meth:`_rewrite_many`)."""
        await self._rewrite_many(user_ids, [(bucket_key, change)])

    async def _rewrite_many(
        self,
        user_ids: Iterable[str],
        rewrites: Sequence[tuple[Callable[[int], str], Change]],
        *,
        bloom_pending: bool = False,
    ) -> None:
        """For each ``(bucket_key, change)``: read each user's value in its bucket, apply ``change``,
        write back (None deletes), all in one compare-and-set: written only if none of the values
        read changed meanwhile, else computed again from the current values (which the failed
        compare-and-set answers). A change may run several times, so it must not depend on what an
        earlier run did; an exception it raises aborts the rewrite (nothing written). ``bloom_pending``
        adds the users to the Bloom filter's pending set first. (One user's hashes share a hash tag;
        a rewrite of many users' spans several on Redis Cluster.)

        Two round trips when nothing conflicts: the epoch, the Bloom pending set, the first topic
        mark and the reads; then the compare-and-set and the second mark."""
        grouped = group_by_bucket(set(user_ids), self.buckets)
        plan = [
            (bucket_key(bucket), users, change) for bucket_key, change in rewrites for bucket, users in grouped.items()
        ]
        if not plan:
            return
        marked = [] if all(key == self._keys.last_seen_bucket for key, _ in rewrites) else list(grouped_users(grouped))
        pipe = self._redis.pipeline(transaction=False)
        self.epoch.stamp(pipe)  # its own slot on Redis Cluster: not inside the compare-and-set
        if bloom_pending:
            pipe.sadd(self._keys.bloom_pending(), *grouped_users(grouped))
        self.changes.queue(pipe, marked)
        for key, users, _ in plan:
            pipe.hmget(key, users)
        replies = await pipe.execute()
        rows = cast(list[list[bytes | None]], replies[len(replies) - len(plan) :])
        keys = [key for key, _, _ in plan]
        for attempt in range(MAX_ATTEMPTS):
            args: list[bytes | str | int] = []
            for (_, users, change), raws in zip(plan, rows, strict=True):
                args.append(len(users))
                for user_id, raw in zip(users, raws, strict=True):
                    new = change(user_id, raw)
                    args += (
                        user_id,
                        b"-" if raw is None else b"=" + raw,
                        b"." if new == raw else b"-" if new is None else b"=" + new,
                    )
            pipe = self._redis.pipeline(transaction=False)
            pipe.eval(_COMPARE_AND_SET, len(keys), *keys, *args)
            self.changes.queue(pipe, marked)
            answer = (await pipe.execute())[0]
            if not isinstance(answer, list):
                return
            current = cast(list[bytes | None], answer[1:])
            rows, at = [], 0
            for _, users, _ in plan:
                rows.append(current[at : at + len(users)])
                at += len(users)
            # Jittered, growing pause: writers that collided do not collide again in lockstep.
            await asyncio.sleep(random.uniform(0, min(0.05, 0.0005 * (attempt + 1))))
        raise StoreError(f"gave up rewriting {sorted(keys)} after {MAX_ATTEMPTS} conflicting attempts")

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
        new. The check and the write are one script, so concurrent registrations cannot pass the
        limit together, and one that replaces a known device keeps its ``added_at``; with the epoch
        and the topic marks before and after it, one round trip."""
        now = now or utcnow()
        user = check_user_id(device.user_id)
        bucket = bucket_of(user, self.buckets)
        line = device.model_copy(update={"added_at": device.added_at or now}).to_json()
        cut = line.rindex(_ADDED_AT)  # added_at is the last field: the line ends with it
        at = line.index(_DEVICE_ID)
        needle = line[at : line.index(_USER_ID, at) + 1]
        pipe = self._redis.pipeline(transaction=False)
        self.epoch.stamp(pipe)
        self.changes.queue(pipe, [user])
        pipe.eval(
            _REGISTER_DEVICE,
            2,
            self._keys.device_bucket(bucket),
            self._keys.last_seen_bucket(bucket),
            user,
            device.device_id,
            needle,
            line[:cut],
            line[cut + len(_ADDED_AT) : -1],
            b"0" if device.added_at else b"1",
            max_devices,
            int(now.timestamp()),
        )
        self.changes.queue(pipe, [user])
        replies = await pipe.execute()
        outcome = replies[-2]
        if outcome == -2:
            raise DeviceLimit(f"a user has at most {max_devices} devices")
        return bool(outcome == 1)

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

        await self._rewrite_many([user_id], [(self._keys.device_bucket, change), (self._keys.last_seen_bucket, unseen)])
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
        pipe = self._redis.pipeline(transaction=False)
        self.epoch.stamp(pipe)
        pipe.sadd(self._keys.bloom_pending(), user_id)
        self.changes.queue(pipe, [user_id])
        buckets = (self._keys.device_bucket(bucket), self._keys.last_seen_bucket(bucket))
        pipe.eval(_REMOVE_USER, 3, *buckets, self._keys.preference_bucket(bucket), user_id)  # one hash tag
        self.changes.queue(pipe, [user_id])
        replies = await pipe.execute()
        return bool(replies[-2])

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
        pipe = self._redis.pipeline(transaction=False)
        self.epoch.stamp(pipe)
        pipe.sadd(self._keys.bloom_pending(), *preferences)
        self.changes.queue(pipe, list(preferences))
        for bucket, users in group_by_bucket(preferences, self.buckets).items():
            key = self._keys.preference_bucket(bucket)
            custom = {u: preferences[u].encode() for u in users if not preferences[u].is_default()}
            default = [u for u in users if preferences[u].is_default()]
            if custom:
                pipe.hset(key, mapping=cast(dict[Any, Any], custom))
            if default:
                pipe.hdel(key, *default)
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
        await self._rewrite_many([user_id], [(self._keys.preference_bucket, rewrite)], bloom_pending=True)
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
