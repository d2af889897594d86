"""Who can receive a game's Live Activity: the tokens and channels apps register, kept in Redis.

- **Push-to-start tokens**, one per user and activity type (``Keys.la_start_tokens``, bucketed as
  the devices): a new token replaces the old one (ActivityKit hands out a new token when it rotates
  it; the old one is dead).
- **Update tokens**, one per (user, game, device) (``Keys.la_update_tokens``): the push token of the
  activity a device of the user shows for the game. A Live Activity is per device (a fan's iPhone and
  iPad each show one), so the app names its device (its install id; ``""``: the app said none, one
  activity per user as before). A rotation replaces the device's token, and the replaced token is
  *retired* (``Keys.la_retired``): registering it again is refused, so a late, out-of-order request
  cannot bring a dead token back; another device's token is never touched.
- **Android registrations**, one FCM token per (user, game, device) (``Keys.la_android``).

A user's registrations of a game are one hash field, ``{device: token}`` as JSON (at most
``MAX_DEVICES``, the least recently written dropped past it), so "does this user watch the game" is
one HMGET for a chunk of followers.
- **Broadcast channels**, one per game (``Keys.la_channels``): the APNs channel id, its storage
  policy and when it was created; written and removed by the channel lifecycle (``channels``).

Per-game registrations expire ``ttl_s`` after their last write (a Live Activity lives 8 hours, 12
on the lock screen), so nothing outlives its game. Tokens come here checked by the API (the same
checks as device addresses, ``goalhorn.admin.addresses``); the registry itself refuses only what
could break its keys or records (:class:`TokenRejected`). Every write stamps the subscriber epoch
first (``goalhorn.preferences.epoch``): registrations are subscriber data, and Redis that lost them
must be told from "nobody registered".
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, cast

from redis.exceptions import WatchError as _WatchError

from goalhorn.errors import GoalhornError
from goalhorn.keys import Keys
from goalhorn.preferences.epoch import SubscriberEpoch
from goalhorn.preferences.reader import bucket_of, group_by_bucket
from goalhorn.redis_client import Redis, hmget_many

MAX_TOKEN_CHARS = 1024
MAX_DEVICES = 10
"""Devices kept per user and game: past it the least recently registered is dropped (not retired), so
an app sending a new install id on every launch cannot grow a record without bound."""
DEVICE_RE = re.compile(r"[A-Za-z0-9._-]{0,64}")
"""A device (the app's install id, a UUID or a Firebase installation id): short, safe characters
(never ``#``, which joins it to the user and game in a delivery device id); ``""``: none given."""
KEEP_STARTS_MS = 12 * 3600 * 1000
"""A start is remembered this long (the longest a Live Activity can be shown): one per user and game."""

# KEYS[1] the starts hash of the user's bucket; ARGV: user, game digest, now ms, keep ms
_RUNNING = """
local raw = redis.call('HGET', KEYS[1], ARGV[1]) or ''
for g in string.gmatch(raw, '([^=;]+)=') do
  if g == ARGV[2] then return 0 end
end
local entry = ARGV[2] .. '=' .. ARGV[3] .. ':' .. 'app'
if raw == '' then raw = entry else raw = raw .. ';' .. entry end
redis.call('HSET', KEYS[1], ARGV[1], raw)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
"""
Storage = Literal[0, 1]
"""APNs channel message storage policy: 0 No Message Storage (Apple's advice for sports scores), 1 Most Recent."""
Saved = Literal["created", "replaced", "unchanged"]


class TokenRejected(GoalhornError):
    """A token the registry cannot keep (empty, too long, spaces or control characters), or a retired
    update token registered again; the message says which."""


def start_digest(game_id: str) -> str:
    """How a game is named in a user's record of starts (game keys may hold ``=`` and ``;``)."""
    return hashlib.blake2b(game_id.encode(), digest_size=8).hexdigest()


def text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def check_token(token: str, what: str) -> str:
    """``token`` as stored: APNs tokens are hex and compared lower-case (one token, one entry)."""
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isprintable() or any(c.isspace() for c in token):
        raise TokenRejected(f"not a {what}: 1-{MAX_TOKEN_CHARS} printable characters without spaces")
    return token


def apns_token(token: str) -> str:
    return check_token(token, "APNs token").lower()


def check_device(device: str) -> str:
    if DEVICE_RE.fullmatch(device) is None:
        raise TokenRejected("not a device id: at most 64 letters, digits, '.', '_' or '-'")
    return device


def registration(user_id: str, device: str) -> str:
    """How one registration is named (``goalhorn live game``, ``update_tokens``): the user, and
    ``#<device>`` when the app named its device."""
    return f"{user_id}#{device}" if device else user_id


def devices_of(raw: bytes | str | None) -> dict[str, str]:
    """A user's stored registrations of a game, device -> token (a bare token: device ``""``)."""
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"": text(raw)}
    return {str(k): str(v) for k, v in data.items()}


@dataclass(frozen=True, slots=True)
class Channel:
    """A game's APNs broadcast channel."""

    game_id: str
    channel_id: str
    storage: int
    created_at: float
    """Epoch seconds."""
    final_at: float | None = None
    """When the channel lifecycle first saw the game final (epoch seconds)."""

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Channel:
        data = json.loads(raw)
        final_at = data.get("final_at")
        return cls(
            str(data["game_id"]),
            str(data["channel_id"]),
            int(data["storage"]),
            float(data["created_at"]),
            float(final_at) if final_at is not None else None,
        )


class LiveRegistry:
    """The Live Activity tokens, Android registrations and channels of one namespace."""

    def __init__(self, redis: Redis, keys: Keys, *, buckets: int, ttl_s: int = 12 * 3600) -> None:
        self._redis = redis
        self._keys = keys
        self.buckets = buckets
        self._ttl_s = ttl_s
        self._epoch = SubscriberEpoch(redis, keys)
        self._running = redis.register_script(_RUNNING)

    # --- push-to-start tokens -------------------------------------------------------------------
    async def set_start_token(self, user_id: str, activity_type: str, token: str) -> Saved:
        """Keep ``token`` as the user's push-to-start token of ``activity_type`` (replacing any other)."""
        token = apns_token(token)
        key = self._keys.la_start_tokens(bucket_of(user_id, self.buckets))
        await self._epoch.ensure()
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    tokens = _tokens(await pipe.hget(key, user_id))
                    before = tokens.get(activity_type)
                    if before == token:
                        return "unchanged"
                    tokens[activity_type] = token
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, user_id, json.dumps(tokens, separators=(",", ":")))
                    await pipe.execute()
                    return "created" if before is None else "replaced"
                except _WatchError:
                    continue

    async def start_tokens(self, user_id: str) -> dict[str, str]:
        """The user's push-to-start tokens, by activity type."""
        return _tokens(await self._redis.hget(self._keys.la_start_tokens(bucket_of(user_id, self.buckets)), user_id))

    async def delete_start_token(self, user_id: str, activity_type: str) -> bool:
        key = self._keys.la_start_tokens(bucket_of(user_id, self.buckets))
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    tokens = _tokens(await pipe.hget(key, user_id))
                    if tokens.pop(activity_type, None) is None:
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if tokens:
                        pipe.hset(key, user_id, json.dumps(tokens, separators=(",", ":")))
                    else:
                        pipe.hdel(key, user_id)
                    await pipe.execute()
                    return True
                except _WatchError:
                    continue

    async def start_tokens_of(self, user_ids: Sequence[bytes], activity_type: str) -> list[str | None]:
        """Each user's push-to-start token of ``activity_type`` (None: none), one HMGET per bucket."""
        grouped = group_by_bucket(user_ids, self.buckets)
        rows = await hmget_many(self._redis, [(self._keys.la_start_tokens(b), us) for b, us in grouped.items()])
        found: dict[bytes, str | None] = {}
        for users, row in zip(grouped.values(), rows, strict=True):
            for user, raw in zip(users, row, strict=True):
                found[user] = _tokens(raw).get(activity_type) if raw else None
        return [found[user] for user in user_ids]

    async def mark_running(self, user_id: str, game_id: str) -> bool:
        """The user's phone shows the game's activity already (the app started it, on the game's channel
        or not): the game's start is not pushed to them. False if a start was recorded before."""
        await self._epoch.ensure()
        key = self._keys.la_starts(bucket_of(user_id, self.buckets))
        args: list[str | int] = [user_id, start_digest(game_id), int(time.time() * 1000), KEEP_STARTS_MS]
        return bool(await self._running(keys=[key], args=args))

    # --- update tokens ----------------------------------------------------------------------------
    async def set_update_token(self, user_id: str, game_id: str, token: str, device: str = "") -> Saved:
        """Keep ``token`` as the update token of the activity ``device`` of the user shows for
        ``game_id``; the one it replaces on that device is retired. TokenRejected for a token a rotation
        retired before."""
        token = apns_token(token)
        retired = self._keys.la_retired(game_id)
        return await self._set(self._keys.la_update_tokens(game_id), user_id, check_device(device), token, retired)

    async def update_token(self, user_id: str, game_id: str, device: str = "") -> str | None:
        raw = await self._redis.hget(self._keys.la_update_tokens(game_id), user_id)
        return devices_of(raw).get(device)

    async def delete_update_token(self, user_id: str, game_id: str, device: str = "") -> bool:
        """Forget the update token of the user's activity of the game on ``device`` (the activity
        ended); it is retired."""
        key, retired = self._keys.la_update_tokens(game_id), self._keys.la_retired(game_id)
        return await self._pop(key, user_id, device, retire=retired)

    async def update_tokens(self, game_id: str) -> dict[str, str]:
        """registration (``user`` or ``user#device``) -> update token, of every activity of the game."""
        return _flat(await self.update_devices(game_id))

    async def update_devices(self, game_id: str) -> dict[str, dict[str, str]]:
        """user id -> {device: update token}, of every activity of the game registered."""
        return await self._all(self._keys.la_update_tokens(game_id))

    # --- Android live updates -----------------------------------------------------------------------
    async def set_android(self, user_id: str, game_id: str, fcm_token: str, device: str = "") -> Saved:
        """Send the game's live updates to the user's ``fcm_token`` on ``device`` (replacing the one
        that device registered)."""
        fcm_token = check_token(fcm_token, "FCM token")
        return await self._set(self._keys.la_android(game_id), user_id, check_device(device), fcm_token, None)

    async def android_token(self, user_id: str, game_id: str, device: str = "") -> str | None:
        return devices_of(await self._redis.hget(self._keys.la_android(game_id), user_id)).get(device)

    async def delete_android(self, user_id: str, game_id: str, device: str = "") -> bool:
        return await self._pop(self._keys.la_android(game_id), user_id, device)

    async def android(self, game_id: str) -> dict[str, str]:
        """registration (``user`` or ``user#device``) -> FCM token registered for the game's live updates."""
        return _flat(await self.android_devices(game_id))

    async def android_devices(self, game_id: str) -> dict[str, dict[str, str]]:
        """user id -> {device: FCM token} registered for the game's live updates."""
        return await self._all(self._keys.la_android(game_id))

    # --- broadcast channels --------------------------------------------------------------------------
    async def channel(self, game_id: str) -> Channel | None:
        raw = await self._redis.hget(self._keys.la_channels(), game_id)
        return Channel.decode(raw) if raw is not None else None

    async def channels(self) -> list[Channel]:
        """Every channel kept, oldest first."""
        raw = cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.la_channels()))
        return sorted((Channel.decode(value) for value in raw.values()), key=lambda c: c.created_at)

    async def channel_count(self) -> int:
        return int(await self._redis.hlen(self._keys.la_channels()))

    async def keep_channel(self, channel: Channel) -> None:
        await self._redis.hset(self._keys.la_channels(), channel.game_id, channel.encode())

    async def keep_new_channel(self, channel: Channel) -> bool:
        """Keep ``channel`` as its game's only if the game has none; False when it has one already."""
        return bool(await self._redis.hsetnx(self._keys.la_channels(), channel.game_id, channel.encode()))

    async def forget_channel(self, game_id: str) -> bool:
        return bool(await self._redis.hdel(self._keys.la_channels(), game_id))

    async def forget_user(self, user_id: str) -> None:
        """Forget a deleted user's push-to-start tokens and starts (their per-game registrations expire
        with the games)."""
        bucket = bucket_of(user_id, self.buckets)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(self._keys.la_start_tokens(bucket), user_id)
        pipe.hdel(self._keys.la_starts(bucket), user_id)
        await pipe.execute()

    # --- dead tokens -----------------------------------------------------------------------------------
    async def forget_dead(self, device_id: str, user_id: str, address: str) -> bool:
        """Forget what a delivery device of a Live Activity intent stood for, once its provider said the
        token (or channel) is dead: an update token (retired), a push-to-start token, an Android
        registration or a game's channel, if it is still the one registered. False for a device of no
        Live Activity, or one registered again since. A per-game device id ends in ``#<device>`` when
        the app named its device (``la:update:<user>:<game>#<device>``)."""
        for kind in ("update", "start", "android"):
            prefix = f"la:{kind}:{user_id}:"
            if not device_id.startswith(prefix):
                continue
            rest = device_id[len(prefix) :]
            if kind == "start":
                tokens = await self.start_tokens(user_id)
                types = [t for t, token in tokens.items() if token == address.lower()]
                return any([await self.delete_start_token(user_id, t) for t in types])
            game, _, device = rest.rpartition("#")
            # a game key may hold '#' itself: the whole rest is the game when no such device holds the token
            candidates = [(game, device)] if game and DEVICE_RE.fullmatch(device) else []
            for game, device in [*candidates, (rest, "")]:
                if kind == "update":
                    if await self.update_token(user_id, game, device) == address.lower():
                        return await self.delete_update_token(user_id, game, device)
                elif await self.android_token(user_id, game, device) == address:
                    return await self.delete_android(user_id, game, device)
            return False
        if device_id.startswith("channel:") and address.startswith("channel:"):
            channel = await self.channel(device_id[len("channel:") :])
            if channel is not None and channel.channel_id == address[len("channel:") :]:
                return await self.forget_channel(channel.game_id)
        return False

    # --- helpers ---------------------------------------------------------------------------------------
    async def _set(self, key: str, user_id: str, device: str, token: str, retired: str | None) -> Saved:
        """Keep ``token`` as ``device``'s in the user's field of ``key``; the device's token it replaces
        goes to ``retired`` (update tokens), where a token is refused from then on."""
        await self._epoch.ensure()
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key, *([retired] if retired else []))
                    devices = devices_of(await pipe.hget(key, user_id))
                    before = devices.get(device)
                    unchanged = before == token  # written again all the same: the record's TTL starts anew
                    if not unchanged and retired is not None and await pipe.sismember(retired, token):
                        raise TokenRejected("this update token was replaced by a newer one: register the newest")
                    # one token is one activity: a token another device of the user held moves to this one
                    devices = {d: t for d, t in devices.items() if d != device and t != token}
                    devices[device] = token  # last, as the most recently written
                    while len(devices) > MAX_DEVICES:
                        del devices[next(iter(devices))]
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, user_id, _encode(devices))
                    if retired is not None and before is not None and not unchanged:
                        pipe.sadd(retired, before)
                    for each in (key, *([retired] if retired else [])):
                        pipe.expire(each, self._ttl_s)
                    await pipe.execute()
                    return "unchanged" if unchanged else "created" if before is None else "replaced"
                except _WatchError:
                    continue

    async def _all(self, key: str) -> dict[str, dict[str, str]]:
        raw = cast(dict[bytes, bytes], await self._redis.hgetall(key))
        return {text(user): devices_of(value) for user, value in raw.items()}

    async def _pop(self, key: str, user_id: str, device: str, *, retire: str | None = None) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    devices = devices_of(await pipe.hget(key, user_id))
                    before = devices.pop(device, None)
                    if before is None:
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if devices:
                        pipe.hset(key, user_id, _encode(devices))
                    else:
                        pipe.hdel(key, user_id)
                    if retire is not None:
                        pipe.sadd(retire, before)
                        pipe.expire(retire, self._ttl_s)
                    await pipe.execute()
                    return True
                except _WatchError:
                    continue


def _encode(devices: dict[str, str]) -> str:
    return json.dumps(devices, separators=(",", ":"))


def _flat(by_user: dict[str, dict[str, str]]) -> dict[str, str]:
    return {registration(user, device): token for user, devices in by_user.items() for device, token in devices.items()}


def _tokens(raw: bytes | str | None) -> dict[str, str]:
    """A user's stored push-to-start tokens; an unreadable record counts as none (it is rewritten)."""
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
