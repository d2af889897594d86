"""Import subscribers from JSONL into the preference store, and export them back.

An import reads the file a line at a time (a line is at most 64 KiB; a longer one is skipped, not
read into memory), rejects each bad line with its number and reason and goes on, and writes the good
ones in chunks through :class:`~goalhorn.preferences.store.PreferenceStore`, so the expander finds
them exactly as it finds users registered any other way. It is idempotent and replaces: a user whose
line is unchanged costs two reads and no write, and a changed user's devices, preferences and
imported follows become those of the line (devices it no longer lists are removed, and so are the
follows an earlier import wrote that it no longer lists). Users absent from the file are left
alone: an import is not a sync.

Follower sets are keyed by what is followed, so which sets to take a user out of is known from what
the last import wrote for that user: its *profile*, the user's follows and locale in a bucketed
HASH beside their devices. Each chunk is written additions first and the profiles last, so an import
that stops half-way leaves nothing a re-run would not find and finish. Preferences written go
through the Bloom filter's pending set; at the end the filter is rebuilt so the pending set is
small again.

An export reads what the expander reads (devices, preferences, and the follower sets themselves,
scanned), so it also holds users the import never wrote; a user's locale comes from the profile,
else from their devices.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from pydantic import ValidationError
from redis.exceptions import RedisError

from goalhorn.admin.subscriber_lines import (
    DEFAULT_LOCALE,
    MAX_LINE_BYTES,
    Follows,
    LineRejected,
    Subscriber,
    parse_line,
)
from goalhorn.errors import StoreError
from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.epoch import Epoch, SubscriberEpoch
from goalhorn.preferences.layout import check_layout
from goalhorn.preferences.model import DEFAULT_PREFERENCES, Preferences, decode_devices
from goalhorn.preferences.reader import group_by_bucket
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers.ssrf import AddressPolicy
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

CHUNK = 1000
KEPT_REJECTIONS = 1000
"""Rejections an :class:`ImportReport` keeps (all are counted and passed to ``on_rejected``)."""
REMOVAL_CONCURRENCY = 16


def profile_bucket(keys: Keys, bucket: int) -> str:
    """HASH user id -> what the last import wrote for the user: follows and locale (compact JSON);
    in the same bucket and slot as the user's devices. (Built here, not in ``goalhorn.keys``, while
    only the import writes it.)"""
    return f"{keys.namespace}:subscribers:{{b{bucket}}}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A line left out of the import, and why (``devices[0].address: not an APNs token``)."""

    line: int
    reason: str


@dataclass(slots=True)
class ImportReport:
    """What an import did; ``imported`` lines include the ``unchanged`` ones."""

    imported: int = 0
    changed: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    devices_written: int = 0
    devices_removed: int = 0
    follows_added: int = 0
    follows_removed: int = 0
    preferences_written: int = 0
    bloom_rebuilt: bool = False

    @property
    def unchanged(self) -> int:
        return self.imported - self.changed

    def as_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "rejections": [{"line": r.line, "reason": r.reason} for r in self.rejections],
            "devices_written": self.devices_written,
            "devices_removed": self.devices_removed,
            "follows_added": self.follows_added,
            "follows_removed": self.follows_removed,
            "preferences_written": self.preferences_written,
            "bloom_rebuilt": self.bloom_rebuilt,
        }


def read_lines(source: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, line without its line break or None if longer than limit, bytes read so
    far)``; a long line is skipped in bounded reads, never held whole."""
    number = done = 0
    while raw := source.readline(limit + 2):
        number += 1
        done += len(raw)
        if not raw.endswith(b"\n") and len(raw) == limit + 2:
            while raw and not raw.endswith(b"\n"):
                raw = source.readline(64 * 1024)
                done += len(raw)
            yield number, None, done
            continue
        line = raw.rstrip(b"\r\n")
        yield number, (line if len(line) <= limit else None), done


async def import_subscribers(
    redis: Redis,
    settings: Settings,
    source: IO[bytes],
    *,
    on_progress: Callable[[int], None] | None = None,
    on_rejected: Callable[[Rejection], None] | None = None,
    chunk: int = CHUNK,
    user_prefix: str = "",
    on_written: Callable[[Sequence[Subscriber]], Awaitable[None]] | None = None,
) -> ImportReport:
    """Import the JSONL in ``source`` (see :mod:`goalhorn.admin.subscriber_lines`).

    ``on_progress`` gets the bytes read so far after each chunk; ``on_rejected`` each rejected line as
    it is found; ``on_written`` each chunk of subscribers once written. ``user_prefix`` is put before
    every user id of the file (the API stores a tenant's user ``u42`` as ``<tenant>/u42``).
    ConfigError when the stored layout or the webhook allowlist is wrong (nothing is written);
    StoreError when Redis fails (the chunks before stay written; a re-run finishes)."""
    keys = Keys(settings.namespace)
    policy = AddressPolicy.from_allowlist(settings.webhook_allowlist)
    report = ImportReport()
    try:
        await check_layout(redis, keys, settings)
        writer = _ChunkWriter(redis, keys, settings.preference_buckets)
        first_line: dict[str, int] = {}
        pending: list[Subscriber] = []
        done = 0
        for number, raw, done in read_lines(source):
            if raw is not None and not raw.strip():
                continue
            try:
                if raw is None:
                    raise LineRejected(f"line longer than {MAX_LINE_BYTES // 1024} KiB")
                subscriber = parse_line(raw, policy)
                if user_prefix:
                    subscriber = _prefixed(subscriber, user_prefix)
                earlier = first_line.setdefault(subscriber.user_id, number)
                if earlier != number:
                    raise LineRejected(f"user_id: {subscriber.user_id!r} is already on line {earlier}")
            except LineRejected as exc:
                rejection = Rejection(number, str(exc))
                report.rejected += 1
                if len(report.rejections) < KEPT_REJECTIONS:
                    report.rejections.append(rejection)
                if on_rejected is not None:
                    on_rejected(rejection)
                continue
            pending.append(subscriber)
            if len(pending) >= chunk:
                await writer.write(pending, report)
                if on_written is not None:
                    await on_written(pending)
                pending = []
                if on_progress is not None:
                    on_progress(done)
        if pending:
            await writer.write(pending, report)
            if on_written is not None:
                await on_written(pending)
        if on_progress is not None:
            on_progress(done)
        if report.preferences_written:
            bloom = PreferenceBloom(
                redis, keys, buckets=settings.preference_buckets, error_rate=settings.bloom_error_rate
            )
            # Under another process's rebuild lock: that rebuild, or the next, folds these users in;
            # until then they are pending, which every reader treats as "maybe".
            report.bloom_rebuilt = await bloom.rebuild_if_due(await bloom.snapshot(), 1)
    except RedisError as exc:
        raise StoreError(f"Redis failed during the import ({type(exc).__name__}: {exc})") from exc
    return report


def _prefixed(subscriber: Subscriber, prefix: str) -> Subscriber:
    user_id = prefix + subscriber.user_id
    devices = tuple(d.model_copy(update={"user_id": user_id}) for d in subscriber.devices)
    return dataclasses.replace(subscriber, user_id=user_id, devices=devices)


class _ChunkWriter:
    """Writes chunks of subscribers, each replacing what is stored for its users."""

    def __init__(self, redis: Redis, keys: Keys, buckets: int) -> None:
        self._redis = redis
        self._keys = keys
        self._buckets = buckets
        self._store = PreferenceStore(redis, keys, buckets=buckets)
        self._sets: dict[str, Callable[[str], str]] = {
            "teams": keys.team_followers,
            "matches": keys.match_watchers,
            "markets": keys.market_watchers,
            "sports": keys.sport_fans,
        }

    async def write(self, chunk: Sequence[Subscriber], report: ImportReport) -> None:
        users = [s.user_id for s in chunk]
        profiles, preferences = await self._read(users)
        stored_devices = await self._store.devices_of_many(users)
        new_devices: list[Device] = []
        removed_devices: dict[str, list[str]] = {}
        new_preferences: dict[str, Preferences] = {}
        added: dict[str, list[tuple[str, str]]] = defaultdict(list)
        removed: list[tuple[str, str]] = []
        new_profiles: dict[str, bytes] = {}
        for subscriber, devices in zip(chunk, stored_devices, strict=True):
            user = subscriber.user_id
            old = {d.device_id: d for d in devices}
            fresh = [d for d in subscriber.devices if not _same_device(old.get(d.device_id), d)]
            listed = {d.device_id for d in subscriber.devices}
            gone = [device_id for device_id in old if device_id not in listed]
            old_follows = _profile_follows(profiles.get(user))
            old_preferences = _preferences(preferences.get(user))
            profile = _profile(subscriber)
            if old_preferences != subscriber.preferences:
                new_preferences[user] = subscriber.preferences
            for kind in self._sets:
                now, before = getattr(subscriber.follows, kind), getattr(old_follows, kind)
                added[kind].extend((user, target) for target in now - before)
                removed.extend((self._sets[kind](target), user) for target in before - now)
            new_devices += fresh
            if gone:
                removed_devices[user] = gone
            if profile != profiles.get(user):
                new_profiles[user] = profile
            if fresh or gone or user in new_preferences or profile != profiles.get(user):
                report.changed += 1
        report.imported += len(chunk)
        # Additions first, removals next, the profiles (what a re-run compares with) last.
        if new_devices:
            await self._store.add_devices(new_devices)
        await self._store.follow_teams(added["teams"])
        await self._store.watch_matches(added["matches"])
        await self._store.watch_markets(added["markets"])
        await self._store.follow_sports(added["sports"])
        await self._store.set_preferences(new_preferences)
        await self._store.leave(removed)
        await self._remove_devices(removed_devices)
        await self._write_profiles(new_profiles)
        report.devices_written += len(new_devices)
        report.devices_removed += sum(len(ids) for ids in removed_devices.values())
        report.follows_added += sum(len(pairs) for pairs in added.values())
        report.follows_removed += len(removed)
        report.preferences_written += len(new_preferences)

    async def _read(self, users: Sequence[str]) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """The users' stored profiles and preference records, in one round trip."""
        grouped = group_by_bucket(users, self._buckets)
        pipe = self._redis.pipeline(transaction=False)
        for bucket, ids in grouped.items():
            pipe.hmget(profile_bucket(self._keys, bucket), ids)
            pipe.hmget(self._keys.preference_bucket(bucket), ids)
        rows = cast(list[list[bytes | None]], await pipe.execute())
        profiles: dict[str, bytes] = {}
        preferences: dict[str, bytes] = {}
        for n, ids in enumerate(grouped.values()):
            for user, profile, record in zip(ids, rows[2 * n], rows[2 * n + 1], strict=True):
                if profile is not None:
                    profiles[user] = profile
                if record is not None:
                    preferences[user] = record
        return profiles, preferences

    async def _remove_devices(self, removed: dict[str, list[str]]) -> None:
        """Each user's devices one after the other (each removal rewrites the user's record), users
        side by side."""
        limit = asyncio.Semaphore(REMOVAL_CONCURRENCY)

        async def remove(user: str, device_ids: list[str]) -> None:
            async with limit:
                for device_id in device_ids:
                    await self._store.remove_device(user, device_id)

        await asyncio.gather(*(remove(user, ids) for user, ids in removed.items()))

    async def _write_profiles(self, profiles: dict[str, bytes]) -> None:
        if profiles:
            pipe = self._redis.pipeline(transaction=False)
            for bucket, users in group_by_bucket(profiles, self._buckets).items():
                pipe.hset(profile_bucket(self._keys, bucket), mapping={u: profiles[u] for u in users})
            await pipe.execute()


def _same_device(stored: Device | None, line: Device) -> bool:
    return stored is not None and stored.model_copy(update={"added_at": None}) == line


def _profile(subscriber: Subscriber) -> bytes:
    record: dict[str, Any] = subscriber.follows.record()
    if subscriber.locale != DEFAULT_LOCALE:
        record["l"] = subscriber.locale
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def _profile_record(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _profile_follows(raw: bytes | None) -> Follows:
    return Follows.from_record(_profile_record(raw))


def _preferences(raw: bytes | None) -> Preferences | None:
    """A stored preference record; None (so it is rewritten) if it cannot be read."""
    if raw is None:
        return DEFAULT_PREFERENCES
    try:
        return Preferences.decode(raw)
    except (ValueError, TypeError, IndexError, KeyError):
        return None


# --- after a loss ---------------------------------------------------------------------------------
async def declare_restored(redis: Redis, settings: Settings) -> tuple[Epoch | None, Epoch]:
    """Declare the namespace's subscriber data whole again, once it was restored after Redis lost it:
    a new subscriber epoch that every fanout process accepts, so they stop holding intents
    (``goalhorn.segmenter.epoch_watch``). Returns the epoch before and the new one."""
    epoch = SubscriberEpoch(redis, Keys(settings.namespace))
    try:
        before = await epoch.read()
        return before, await epoch.restore()
    except RedisError as exc:
        raise StoreError(f"Redis failed ({type(exc).__name__}: {exc})") from exc


# --- export ---------------------------------------------------------------------------------------
def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def export_subscribers(redis: Redis, settings: Settings) -> list[Subscriber]:
    """Every stored subscriber, by user id: devices, follows (from the follower sets), preferences,
    and the locale. ConfigError if the stored layout differs from ``settings``; StoreError when Redis
    fails."""
    keys = Keys(settings.namespace)
    try:
        await check_layout(redis, keys, settings)
        return await _export(redis, keys, settings.preference_buckets)
    except RedisError as exc:
        raise StoreError(f"Redis failed during the export ({type(exc).__name__}: {exc})") from exc


async def _export(redis: Redis, keys: Keys, buckets: int) -> list[Subscriber]:
    profiles: dict[str, bytes] = {}
    devices: dict[str, list[Device]] = {}
    preferences: dict[str, Preferences] = {}
    for bucket in range(buckets):
        async for user, raw in redis.hscan_iter(profile_bucket(keys, bucket), count=1000):
            profiles[user.decode()] = raw
        async for user, raw in redis.hscan_iter(keys.device_bucket(bucket), count=1000):
            try:
                devices[user.decode()] = decode_devices(raw)
            except ValidationError as exc:
                raise StoreError(f"the stored devices of user {user.decode()!r} cannot be read: {exc}") from exc
        async for user, raw in redis.hscan_iter(keys.preference_bucket(bucket), count=1000):
            preferences[user.decode()] = Preferences.decode(raw)
    follows: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for kind, key_of in (
        ("teams", keys.team_followers),
        ("matches", keys.match_watchers),
        ("markets", keys.market_watchers),
        ("sports", keys.sport_fans),
    ):
        prefix, suffix = key_of("\0").split("\0")
        async for raw_key in redis.scan_iter(match=_glob_escape(prefix) + "*" + _glob_escape(suffix), count=1000):
            key = raw_key.decode()
            target = key[len(prefix) : len(key) - len(suffix)]
            async for member in redis.sscan_iter(key, count=1000):
                follows[member.decode()][kind].add(target)
    out = []
    for user in sorted(profiles.keys() | devices.keys() | preferences.keys() | follows.keys()):
        owned = devices.get(user, [])
        locale = _profile_record(profiles.get(user)).get("l")
        if not isinstance(locale, str):
            locales = {d.locale for d in owned}
            locale = locales.pop() if len(locales) == 1 else DEFAULT_LOCALE
        kinds = follows.get(user, {})
        out.append(
            Subscriber(
                user_id=user,
                locale=locale,
                devices=tuple(owned),
                follows=Follows(*(frozenset(kinds.get(k, ())) for k in ("teams", "matches", "markets", "sports"))),
                preferences=preferences.get(user, DEFAULT_PREFERENCES),
            )
        )
    return out
