"""Which game states become Live Activity intents, and at which priority: per match, in Redis.

A state is claimed by one Lua script per match, so ingest processes polling the same feeds never
both publish it. The script keeps the match's ticker (the ``observed_at`` and content of the last
update published, whether it started or ended) and its count of priority-10 updates in the current
clock hour, and answers:

- nothing for a state not newer than the last one published (a replay, a slower process's poll),
  for a scheduled game, for a game that ended, and for a final game whose activity never started;
- ``start`` for the first live state of a game (kick-off seen, or ingest first seeing it live);
- ``end`` for its first final state;
- ``update`` at once for a change that brought events (a score, a card, a period's end);
- ``update`` as a tick (``LIVE_UPDATE``, priority 3) when only the clock or status changed, at most
  once per ``tick_s`` per match: a tick inside the window is not recorded, so the next poll after it
  (polls go on every few seconds while a game is live) sends the newest content; nothing when the
  content is what was last sent, unless ``REFRESH_S`` passed since the last update (a delay, a long
  break: the state is current, and the ticker must not reach its ``stale-date`` while the game is live).

Start, end, scores and red cards go at priority 9 (APNs 10) and are counted against the hourly
budget (``GOALHORN_LIVE_ACTIVITY_HIGH_PER_HOUR``); past it, scores and cards go at priority 3 while
start and end still go at 9. What a claim recorded is put back (``release``) if its intent could not
be published, so the next poll claims the change again.

A process can also die between its claim and the broker's confirm (``kill -9``, the machine lost), with
no ``release``: the state would count as published, and a start or end never go out (no ticker, or one
showing the game live for hours). So a claim is *pending* until ``confirm`` (called once the broker
confirmed the intent): the ticker keeps ``pending`` (each unconfirmed claim: ``<observed_ms>:<hour it
counted in, or empty>:<deadline ms>``, comma-separated, oldest first), ``pending_until`` (the oldest's
deadline, ``PENDING_S`` after its claim) and the fields the oldest found (``p_observed_ms``,
``p_digest``, ``p_last_event``, ``p_started``, ``p_tick_at``). A claim that finds ``pending_until``
passed first puts those fields back (and the priority-10 counts of this hour those claims took), then
claims as usual: the change is published again by whichever process polls the game next. An intent
that did go out but whose confirm was lost is published twice: harmless (a start is sent to nobody who
got the game's start, ``goalhorn.liveactivities.audience``; an update or end repeats the content).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from goalhorn.intents.liveactivity import (
    HIGH,
    LOW,
    STALE_S,
    LiveEvent,
    content_digest,
    game_key,
    last_event_of,
    wants_high,
)
from goalhorn.keys import Keys
from goalhorn.models import GameEvent, GameState, GameStatus
from goalhorn.redis_client import Redis

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
PENDING_S = 30
"""A claim not confirmed this long is taken for lost (its process died): three times the default
publish confirm timeout (``GOALHORN_PUBLISH_TIMEOUT_S``, 10 s), so a slow confirm is not published twice."""
REFRESH_S = STALE_S // 2
"""A live game whose content has not changed gets a tick this long after its last update, well before
the ticker's ``stale-date`` (``STALE_S`` after the state)."""

# The fields a claim records, as ``release`` and a lost claim's restore put them back ('' : absent).
_FIELDS = "{'observed_ms', 'digest', 'last_event', 'started', 'tick_at'}"
_PENDING = "'pending', 'pending_until', 'p_observed_ms', 'p_digest', 'p_last_event', 'p_started', 'p_tick_at'"

# KEYS[1] the match's ticker hash, KEYS[2] its priority-10 count of this hour
# ARGV: observed_ms, status, digest, last_event ('' keeps the kept one), has_events, urgent,
#       now_ms, tick_ms, budget, count ttl ms, retention ms, refresh ms, pending deadline ms, hour
# -> {action, high, last_event, counted, previous observed_ms, digest, last_event, started, tick_at, restored}
_CLAIM = (
    """
local restored = '0'
local p = redis.call('HMGET', KEYS[1], 'pending', 'pending_until')
if p[1] and p[2] and tonumber(ARGV[7]) >= tonumber(p[2]) then
  -- claims never confirmed (their process died): put back what the oldest found, and this hour's counts
  local names = """
    + _FIELDS
    + """
  for i, name in ipairs(names) do
    local was = redis.call('HGET', KEYS[1], 'p_' .. name) or ''
    if was == '' then redis.call('HDEL', KEYS[1], name) else redis.call('HSET', KEYS[1], name, was) end
  end
  redis.call('HDEL', KEYS[1], 'ended')
  for hour in string.gmatch(p[1], '%d+:(%d*):%d+') do
    if hour == ARGV[14] and tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
  end
  redis.call('HDEL', KEYS[1], """
    + _PENDING
    + """)
  restored = '1'
end
local h = redis.call('HMGET', KEYS[1], 'observed_ms', 'digest', 'last_event', 'started', 'ended', 'tick_at')
for i = 1, 6 do h[i] = h[i] or '' end
local observed = tonumber(ARGV[1])
if h[1] ~= '' and tonumber(h[1]) >= observed then return {'stale', restored} end
if h[5] == '1' then return {'ended', restored} end
local last = ARGV[4]
if last == '' then last = h[3] end
local action
if ARGV[2] == 'final' then
  if h[4] ~= '1' then return {'unstarted', restored} end
  action = 'end'
elseif ARGV[2] == 'live' then
  if h[4] ~= '1' then
    action = 'start'
  elseif h[2] == ARGV[3] and h[3] == last then
    if h[6] == '' or tonumber(ARGV[7]) < tonumber(h[6]) + tonumber(ARGV[12]) then return {'same', restored} end
    action = 'tick'
  elseif ARGV[5] == '1' then
    action = 'update'
  elseif h[6] ~= '' and tonumber(ARGV[7]) < tonumber(h[6]) + tonumber(ARGV[8]) then
    return {'window', restored}
  else
    action = 'tick'
  end
else
  return {'scheduled', restored}
end
local high, counted = '0', '0'
if action == 'start' or action == 'end' then
  high = '1'
elseif action == 'update' and ARGV[6] == '1' then
  high = tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[9]) and '1' or '0'
end
if high == '1' then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[10])
  counted = '1'
end
local entry = ARGV[1] .. ':' .. (counted == '1' and ARGV[14] or '') .. ':' .. ARGV[13]
local pending = redis.call('HGET', KEYS[1], 'pending')
if pending then
  redis.call('HSET', KEYS[1], 'pending', pending .. ',' .. entry)
else
  redis.call('HSET', KEYS[1], 'pending', entry, 'pending_until', ARGV[13], 'p_observed_ms', h[1], 'p_digest', h[2],
    'p_last_event', h[3], 'p_started', h[4], 'p_tick_at', h[6])
end
redis.call('HSET', KEYS[1], 'observed_ms', ARGV[1], 'digest', ARGV[3], 'last_event', last, 'started', '1',
  'tick_at', ARGV[7])
if action == 'end' then redis.call('HSET', KEYS[1], 'ended', '1') end
redis.call('PEXPIRE', KEYS[1], ARGV[11])
return {action, high, last, counted, h[1], h[2], h[3], h[4], h[6], restored}
"""
)

# KEYS[1] the ticker; ARGV[1] the observed_ms claimed. Drops the claim from ``pending`` (all of the
# pending fields with the last one); 0 if it was not pending (confirmed before, or restored as lost).
_SETTLE = (
    """
local function settle(key, observed)
  local pending = redis.call('HGET', key, 'pending')
  if not pending then return 0 end
  local kept, found = {}, false
  for entry in string.gmatch(pending, '[^,]+') do
    if not found and string.match(entry, '^(%d+):') == observed then found = true else kept[#kept + 1] = entry end
  end
  if not found then return 0 end
  if #kept == 0 then
    redis.call('HDEL', key, """
    + _PENDING
    + """)
  else
    redis.call('HSET', key, 'pending', table.concat(kept, ','), 'pending_until', string.match(kept[1], ':(%d+)$'))
  end
  return 1
end
"""
)
_CONFIRM = _SETTLE + "return settle(KEYS[1], ARGV[1])\n"

# KEYS as _CLAIM; ARGV: observed_ms claimed, counted, then the previous observed_ms, digest,
# last_event, started, tick_at ('' for a field that was not there)
# (A release that finds a newer claim leaves its own pending: after PENDING_S it is restored as lost, so
# a start or end released behind a newer claim is published again.)
_RELEASE = (
    _SETTLE
    + """
if redis.call('HGET', KEYS[1], 'observed_ms') ~= ARGV[1] then return 0 end
local names = """
    + _FIELDS
    + """
for i, name in ipairs(names) do
  if ARGV[2 + i] == '' then redis.call('HDEL', KEYS[1], name) else redis.call('HSET', KEYS[1], name, ARGV[2 + i]) end
end
redis.call('HDEL', KEYS[1], 'ended')
if ARGV[2] == '1' then redis.call('DECR', KEYS[2]) end
settle(KEYS[1], ARGV[1])
return 1
"""
)


@dataclass(frozen=True, slots=True)
class Claim:
    """A state this process is to publish as a Live Activity intent, and what to put back if it cannot."""

    key: str
    hour: int
    live_event: LiveEvent
    priority: int
    last_event: str
    observed_ms: int
    counted: bool
    previous: tuple[str, ...]
    restored: bool = False
    """The claim first put back claims whose process died before their confirm (``PENDING_S``)."""


class LivePacing:
    """Claims game states for Live Activity intents (see the module's docstring)."""

    def __init__(self, redis: Redis, keys: Keys, *, high_per_hour: int, tick_s: float, retention_s: int) -> None:
        self._keys = keys
        self._high_per_hour = high_per_hour
        self._tick_ms = int(tick_s * 1000)
        self._retention_ms = retention_s * 1000
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._confirm = redis.register_script(_CONFIRM)

    async def claim(self, state: GameState, events: Sequence[GameEvent], now: datetime) -> Claim | None:
        """The update ``state`` (with the events of its change) is to be published as, or None."""
        if state.status is GameStatus.SCHEDULED:
            return None
        key = game_key(state)
        now_ms = int(now.timestamp() * 1000)
        hour = now_ms // HOUR_MS
        observed_ms = int(state.observed_at.timestamp() * 1000)
        raw = await self._claim(
            keys=[self._keys.la_ticker(key), self._keys.la_high_count(key, hour)],
            args=[
                observed_ms,
                state.status.value,
                content_digest(state),
                last_event_of(events),
                "1" if events else "0",
                "1" if wants_high(events) else "0",
                now_ms,
                self._tick_ms,
                self._high_per_hour,
                2 * HOUR_MS,
                self._retention_ms,
                REFRESH_S * 1000,
                now_ms + PENDING_S * 1000,
                hour,
            ],
        )
        answer = [part.decode() if isinstance(part, bytes) else str(part) for part in raw]
        if answer[-1] == "1":
            log.warning("Live Activity of %s: claims never confirmed (their process died?) were put back", key)
        if answer[0] not in ("start", "update", "tick", "end"):
            return None
        live_event: LiveEvent = "start" if answer[0] == "start" else "end" if answer[0] == "end" else "update"
        return Claim(
            key=key,
            hour=hour,
            live_event=live_event,
            priority=HIGH if answer[1] == "1" else LOW,
            last_event=answer[2],
            observed_ms=observed_ms,
            counted=answer[3] == "1",
            previous=tuple(answer[4:9]),
            restored=answer[9] == "1",
        )

    async def confirm(self, claim: Claim) -> bool:
        """The broker confirmed ``claim``'s intent: it is no longer pending. False if it was not (it was
        confirmed before, or taken for lost after ``PENDING_S`` and published again)."""
        return bool(await self._confirm(keys=[self._keys.la_ticker(claim.key)], args=[claim.observed_ms]))

    async def release(self, claim: Claim) -> bool:
        """Put back what ``claim`` recorded (its intent was not published); False if a newer state was
        claimed meanwhile, which then stands."""
        done = await self._release(
            keys=[self._keys.la_ticker(claim.key), self._keys.la_high_count(claim.key, claim.hour)],
            args=[claim.observed_ms, "1" if claim.counted else "0", *claim.previous],
        )
        return bool(done)
