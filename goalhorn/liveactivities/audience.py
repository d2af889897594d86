"""The ``live:<game key>`` audience of a Live Activity intent, expanded into delivery batches.

Who gets what (``docs/live-activities.md`` has the reasons):

- **update and end** (``data["live_event"]``): the game's broadcast channel, if it has one (one APNs
  "device", ``channel:<id>``: every activity started on the channel gets the broadcast); the update
  token of every activity registered for the game (activities started without the channel, or on
  phones before iOS 18); and every Android registration of the game. Registrations are what the user
  chose to watch: preferences do not filter them.
- **start**: the push-to-start token (of ``GOALHORN_LIVE_ACTIVITY_TYPE``) and the FCM devices of
  every follower of either team whose preferences let the game's start through (as for alerts: a
  user who muted the team, opted out of GAME_START or is in quiet hours gets none), with the
  channel id in the intent's ``input_push_channel`` when the game has one; plus the game's Android
  registrations. A follower whose activity is already registered for the game (an update token or
  an Android registration, of any of their devices) gets no second start. Broadcasts and update tokens get no ``start``
  event: ActivityKit takes it only from a push-to-start token.
- **Starts are paced** (``Keys.la_starts``, one Lua call per bucket and chunk): a user gets at most
  one start per game, ever (a redelivered intent gets the same verdict), and at most
  ``starts_per_user`` in ``start_window_s`` (Apple's on-device push-to-start budget is about ten in a
  short time; past it iOS drops starts silently). A start past the budget is skipped and counted.

No token is sent twice for one intent (tokens are compared across users and kinds). An empty audience
is no error: most games have nobody registered. Redis that lost its data is told apart by the
fanout's subscriber-epoch checks around the expansion (the registry stamps the epoch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from pydantic import ValidationError

from goalhorn.keys import Keys, Platform
from goalhorn.liveactivities.registry import KEEP_STARTS_MS, LiveRegistry, devices_of, start_digest, text
from goalhorn.models import DeliveryBatch, Device, EncodedBatch, Intent
from goalhorn.preferences.eligibility import REASONS, Eligibility, Reason
from goalhorn.preferences.model import decode_devices
from goalhorn.preferences.reader import group_by_bucket
from goalhorn.redis_client import Redis, hmget_many

log = logging.getLogger(__name__)

LIVE_PREFIX = "live:"
CHANNEL_DEVICE = "channel:"
"""Device id (and user id) prefix of a game's broadcast channel, address prefix of its channel id."""

FollowerChunks = Callable[[Sequence[str]], AsyncIterator[tuple[str, list[bytes]]]]
"""Given team ids: chunks of their followers, each with the team it is judged for (a user following
two teams comes once, with the first)."""

# KEYS[1] starts hash of one bucket; ARGV: now_ms, game digest, intent id, window_ms, limit, keep_ms,
# record (1/0), then user ids. A user's record: "<game digest>=<ms>:<intent id>;..." (intent id "app": the
# app started the activity itself, ``LiveRegistry.mark_running``: no start, and not counted in the budget).
# Verdicts: 1 send (first start of the game, or this very intent again), 0 started before, 2 over budget.
_GATE = """
local now, game, intent = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local window, limit, keep, record = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
local out = {}
for i = 8, #ARGV do
  local user = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], user)
  local kept, recent, verdict = {}, 0, nil
  if raw then
    for g, ts, id in string.gmatch(raw, '([^=;]+)=(%d+):([^;]+)') do
      local t = tonumber(ts)
      if t > now - keep then
        kept[#kept + 1] = g .. '=' .. ts .. ':' .. id
        if t > now - window and id ~= 'app' then recent = recent + 1 end
        if g == game then
          if id == intent then verdict = 1 else verdict = 0 end
        end
      end
    end
  end
  if verdict == nil then
    if recent < limit then
      verdict = 1
      if record then
        kept[#kept + 1] = game .. '=' .. ARGV[1] .. ':' .. intent
        redis.call('HSET', KEYS[1], user, table.concat(kept, ';'))
      end
    else
      verdict = 2
    end
  end
  out[#out + 1] = verdict
end
if record and #ARGV > 7 then redis.call('PEXPIRE', KEYS[1], keep) end
return out
"""
SEND, STARTED_BEFORE, OVER_BUDGET = 1, 0, 2


def live_game(intent: Intent) -> str | None:
    """The game key of a Live Activity intent's ``live:<game key>`` audience; None for other intents."""
    if len(intent.segments) == 1 and intent.segments[0].startswith(LIVE_PREFIX):
        return intent.segments[0][len(LIVE_PREFIX) :] or None
    return None


def start_teams(intent: Intent) -> list[str]:
    """The teams whose followers a start goes to: ``home_team_id``/``away_team_id`` of the intent's
    data, else of the start's ``attributes``."""
    teams = [intent.data.get("home_team_id", ""), intent.data.get("away_team_id", "")]
    if not all(teams):
        try:
            attributes = json.loads(intent.data.get("liveactivity", "{}")).get("attributes") or {}
            teams = [str(attributes.get("home_team_id") or ""), str(attributes.get("away_team_id") or "")]
        except (ValueError, AttributeError):
            teams = []
    return list(dict.fromkeys(team for team in teams if team))


@dataclass(slots=True)
class AudienceStats:
    """What one expansion found (the fanout copies it into its ``ExpansionStats``)."""

    users: int = 0
    """Followers looked at for a start."""
    devices: int = 0
    batches: int = 0
    channel: int = 0
    """1 when the game's channel got the intent."""
    update_tokens: int = 0
    start_tokens: int = 0
    android: int = 0
    suppressed: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    started_before: int = 0
    """Followers left out of a start: they got one for this game already (or have its activity)."""
    over_budget: int = 0
    """Followers left out of a start: past ``starts_per_user`` in the window."""
    duplicates: int = 0
    """Tokens met a second time for the intent, not sent again."""
    invalid_preferences: int = 0


class _Batches:
    """Devices into batches of at most ``size`` per platform."""

    def __init__(self, intent: Intent, size: int, stats: AudienceStats) -> None:
        self.intent = intent
        self._size = size
        self._stats = stats
        self._buffers: dict[Platform, list[Device]] = {"apns": [], "fcm": []}
        self._seen: set[tuple[str, str]] = set()

    def add(self, device: Device) -> bool:
        """Buffer ``device`` unless its token was met before; False then."""
        seen = (device.platform, device.address)
        if seen in self._seen:
            self._stats.duplicates += 1
            return False
        self._seen.add(seen)
        self._buffers[device.platform].append(device)
        self._stats.devices += 1
        return True

    def full(self) -> list[EncodedBatch]:
        return [self._cut(p) for p, buffer in self._buffers.items() for _ in range(len(buffer) // self._size)]

    def flush(self) -> list[EncodedBatch]:
        out = self.full()
        out += [self._cut(p) for p, buffer in self._buffers.items() if buffer]
        return out

    def _cut(self, platform: Platform) -> EncodedBatch:
        buffer = self._buffers[platform]
        devices, buffer[:] = buffer[: self._size], buffer[self._size :]
        self._stats.batches += 1
        batch_id = f"{self.intent.intent_id}.live.{platform}.{self._stats.batches}"
        return DeliveryBatch(batch_id=batch_id, platform=platform, intent=self.intent, devices=tuple(devices)).encode()


class LiveAudience:
    """Expands Live Activity intents (``live:<game key>``) over the registry."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        registry: LiveRegistry,
        *,
        activity_type: str,
        starts_per_user: int,
        start_window_s: int,
        batch_size: int = 500,
        scan_count: int = 2000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.registry = registry
        self._activity_type = activity_type
        self._starts_per_user = starts_per_user
        self._window_ms = start_window_s * 1000
        self._batch_size = batch_size
        self._scan_count = scan_count
        self._gate = redis.register_script(_GATE)

    async def expand(
        self,
        intent: Intent,
        followers: FollowerChunks,
        stats: AudienceStats | None = None,
        *,
        now: datetime,
        dry_run: bool = False,
    ) -> AsyncGenerator[EncodedBatch, None]:
        """The intent's batches; ``stats`` is filled in as it goes. ``dry_run`` records no start."""
        stats = stats if stats is not None else AudienceStats()
        game = live_game(intent)
        if game is None:
            return
        channel = await self.registry.channel(game)
        starting = intent.data.get("live_event") == "start"
        if starting and channel is not None:
            intent = intent.model_copy(update={"data": {**intent.data, "input_push_channel": channel.channel_id}})
        batches = _Batches(intent, self._batch_size, stats)
        if channel is not None and not starting:
            address = f"{CHANNEL_DEVICE}{channel.channel_id}"
            device_id = f"{CHANNEL_DEVICE}{game}"
            batches.add(Device(platform="apns", device_id=device_id, user_id=device_id, address=address))
            stats.channel = 1
        if not starting:
            async for user, device_id, token in self._scan(self._keys.la_update_tokens(game), "update", game):
                device = Device(platform="apns", device_id=device_id, user_id=user, address=token)
                stats.update_tokens += batches.add(device)
                for batch in batches.full():
                    yield batch
        async for user, device_id, token in self._scan(self._keys.la_android(game), "android", game):
            device = Device(platform="fcm", device_id=device_id, user_id=user, address=token)
            stats.android += batches.add(device)
            for batch in batches.full():
                yield batch
        if starting:
            teams = start_teams(intent)
            if not teams:
                log.warning("live intent %s: a start without team ids reaches no follower", intent.intent_id)
            async for team, users in followers(teams):
                await self._starts(intent, game, team, users, batches, stats, now, dry_run)
                for batch in batches.full():
                    yield batch
        for batch in batches.flush():
            yield batch

    async def _scan(self, key: str, kind: str, game: str) -> AsyncIterator[tuple[str, str, str]]:
        """(user, delivery device id, token) of each registration in ``key``: the device id is
        ``la:<kind>:<user>:<game>``, and ``#<device>`` after it when the app named its device (a user's
        iPhone and iPad are two devices, each with its own delivery marker)."""
        async for user, raw in self._redis.hscan_iter(key, count=self._scan_count):
            user_id = text(user)
            for device, token in devices_of(raw).items():
                yield user_id, f"la:{kind}:{user_id}:{game}" + (f"#{device}" if device else ""), token

    async def _starts(
        self,
        intent: Intent,
        game: str,
        team: str,
        users: list[bytes],
        batches: _Batches,
        stats: AudienceStats,
        now: datetime,
        dry_run: bool,
    ) -> None:
        """One chunk of a team's followers: who gets a start, in one read and one gate call per bucket."""
        stats.users += len(users)
        buckets = self.registry.buckets
        grouped = group_by_bucket(users, buckets)
        commands: list[tuple[str, Sequence[bytes]]] = []
        for bucket, members in grouped.items():
            commands += [
                (self._keys.preference_bucket(bucket), members),
                (self._keys.la_start_tokens(bucket), members),
                (self._keys.device_bucket(bucket), members),
            ]
        # a user's registrations of a game are one field, whatever their devices: any device watching counts
        commands += [(self._keys.la_update_tokens(game), users), (self._keys.la_android(game), users)]
        rows = await hmget_many(self._redis, commands)
        watching = {u for u, a, b in zip(users, rows[-2], rows[-1], strict=True) if a is not None or b is not None}
        eligibility = Eligibility(intent.model_copy(update={"team_id": team, "game_id": game.split(":", 1)[-1]}), now)
        wanted: dict[int, list[tuple[bytes, str | None, bytes | None]]] = {}
        for n, (bucket, members) in enumerate(grouped.items()):
            prefs, starts, devices = rows[3 * n], rows[3 * n + 1], rows[3 * n + 2]
            for user, raw_prefs, raw_start, raw_devices in zip(members, prefs, starts, devices, strict=True):
                token = _start_token(raw_start, self._activity_type)
                if (token is None and not _has_fcm(raw_devices)) or user in watching:
                    stats.started_before += user in watching
                    continue
                try:
                    reason = eligibility.judge(raw_prefs)[0] if raw_prefs is not None else eligibility.default
                except (ValueError, TypeError, LookupError, AttributeError) as exc:
                    stats.invalid_preferences += 1
                    log.error(
                        "user %r: unreadable preferences record, no start (%s)", user.decode("utf-8", "replace"), exc
                    )
                    continue
                if reason is not None:
                    stats.suppressed[reason] += 1
                    continue
                wanted.setdefault(bucket, []).append((user, token, raw_devices))
        if not wanted:
            return
        digest = start_digest(game)
        head: list[str | int] = [
            int(now.timestamp() * 1000),
            digest,
            intent.intent_id,
            self._window_ms,
            self._starts_per_user,
            max(KEEP_STARTS_MS, self._window_ms),
            0 if dry_run else 1,
        ]
        for bucket, group in wanted.items():
            verdicts = cast(
                list[int],
                await self._gate(keys=[self._keys.la_starts(bucket)], args=[*head, *(u for u, _, _ in group)]),
            )
            for (user, token, raw_devices), verdict in zip(group, verdicts, strict=True):
                if verdict == STARTED_BEFORE:
                    stats.started_before += 1
                    continue
                if verdict == OVER_BUDGET:
                    stats.over_budget += 1
                    continue
                user_id = user.decode()
                if token is not None:
                    device = Device(
                        platform="apns", device_id=f"la:start:{user_id}:{game}", user_id=user_id, address=token
                    )
                    stats.start_tokens += batches.add(device)
                for device in _fcm_devices(user_id, raw_devices):
                    stats.android += batches.add(device)


def _start_token(raw: bytes | None, activity_type: str) -> str | None:
    if raw is None:
        return None
    try:
        tokens = json.loads(raw)
    except ValueError:
        return None
    token = tokens.get(activity_type) if isinstance(tokens, dict) else None
    return token if isinstance(token, str) and token else None


def _has_fcm(raw: bytes | None) -> bool:
    return raw is not None and b'{"platform":"fcm"' in raw


def _fcm_devices(user_id: str, raw: bytes | None) -> list[Device]:
    """The user's stored FCM devices (an unreadable record gives none, logged)."""
    if not raw or b'{"platform":"fcm"' not in raw:
        return []
    try:
        return [d for d in decode_devices(raw) if d.platform == "fcm"]
    except ValidationError as exc:
        log.error("user %r: unreadable device record, no Android start (%s)", user_id, exc.errors()[0]["msg"])
        return []
