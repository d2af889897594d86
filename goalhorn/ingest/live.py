"""Live state: the latest state of every game in Redis, with when it was written, and indexes.

One Lua script per game writes its state hash (``state`` JSON, ``observed_at_ms``,
``updated_at_ms``) and its entries in the indexes by sport and by status, and keeps it in the live
index until it is final — atomically, and only if the snapshot is not older than the one stored, so
a slow poller cannot roll a game back. A game is known by its *game key*, ``<source>:<game id>``,
since two feeds number games differently. Final games expire after ``retention_s``; index entries
older than that are pruned as new states are written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from goalhorn.intents.rules import Original
from goalhorn.keys import Keys
from goalhorn.models import GameState, GameStatus, Sport, utcnow
from goalhorn.redis_client import Redis

log = logging.getLogger(__name__)

_STATUSES = (GameStatus.SCHEDULED, GameStatus.LIVE, GameStatus.FINAL)
ALERTS_KEPT = 5
"""Scoring alerts remembered per team and game, newest last, for the corrections that take them back."""

# KEYS: state hash, live index, sport index, status indexes (scheduled, live, final)
# ARGV: state json, observed ms, updated ms, game key, status position (1-3), retention ms
_WRITE = """
local stored = redis.call('HGET', KEYS[1], 'observed_at_ms')
if stored and tonumber(stored) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'observed_at_ms', ARGV[2], 'updated_at_ms', ARGV[3])
local updated = tonumber(ARGV[3])
local horizon = updated - tonumber(ARGV[6])
redis.call('ZADD', KEYS[3], updated, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', horizon)
for i = 1, 3 do
  if i == tonumber(ARGV[5]) then
    redis.call('ZADD', KEYS[3 + i], updated, ARGV[4])
  else
    redis.call('ZREM', KEYS[3 + i], ARGV[4])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', horizon)
if ARGV[5] == '3' then
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
else
  redis.call('ZADD', KEYS[2], updated, ARGV[4])
  redis.call('PERSIST', KEYS[1])
end
return 1
"""


def game_key(state: GameState) -> str:
    return f"{state.source}:{state.game_id}"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class LiveGame:
    state: GameState
    updated_at: datetime

    def age_s(self, now: datetime | None = None) -> float:
        """Seconds since the feed observed this state."""
        return max(0.0, ((now or utcnow()) - self.state.observed_at).total_seconds())


class LiveState:
    def __init__(self, redis: Redis, keys: Keys, *, retention_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._retention_ms = retention_s * 1000
        self._write = redis.register_script(_WRITE)

    async def write(self, states: Sequence[GameState], now: datetime | None = None) -> int:
        """Store each state unless a newer one is stored already; returns how many were written."""
        if not states:
            return 0
        updated = _ms(now or utcnow())
        pipe = self._redis.pipeline(transaction=False)
        for state in states:
            key = game_key(state)
            await self._write(
                keys=[
                    self._keys.game_state(key),
                    self._keys.live_games(),
                    self._keys.games_by_sport(state.sport.value),
                    *(self._keys.games_by_status(s.value) for s in _STATUSES),
                ],
                args=[
                    state.model_dump_json(),
                    _ms(state.observed_at),
                    updated,
                    key,
                    _STATUSES.index(state.status) + 1,
                    self._retention_ms,
                ],
                client=pipe,
            )
        results = await pipe.execute()
        return sum(int(r) for r in results)

    async def get(self, key: str) -> LiveGame | None:
        raw = await self._redis.hmget(self._keys.game_state(key), ["state", "updated_at_ms"])
        if raw[0] is None or raw[1] is None:
            return None
        return LiveGame(GameState.model_validate_json(raw[0]), datetime.fromtimestamp(int(raw[1]) / 1000, UTC))

    async def live(self) -> list[str]:
        """Game keys of every game not final, most recently updated last."""
        return await self._members(self._keys.live_games())

    async def by_sport(self, sport: Sport) -> list[str]:
        return await self._members(self._keys.games_by_sport(sport.value))

    async def by_status(self, status: GameStatus) -> list[str]:
        return await self._members(self._keys.games_by_status(status.value))

    async def _members(self, key: str) -> list[str]:
        members = await self._redis.zrange(key, 0, -1)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def push_alerts(self, key: str, team_id: str, originals: Sequence[Original]) -> None:
        """Remember the alerts a team's score in game ``key`` went out as (the newest ``ALERTS_KEPT``)."""
        kept = await self.alerts(key, team_id)
        kept.append(list(originals))
        field = f"alerts:{team_id}"
        rows = [[o.to_dict() for o in alerts] for alerts in kept[-ALERTS_KEPT:]]
        await self._redis.hset(self._keys.game_state(key), field, json.dumps(rows))

    async def alerts(self, key: str, team_id: str) -> list[list[Original]]:
        """The team's remembered scoring alerts in the game, oldest first; unreadable ones are skipped."""
        raw = await self._redis.hget(self._keys.game_state(key), f"alerts:{team_id}")
        if raw is None:
            return []
        try:
            return [[Original.from_dict(o) for o in alerts] for alerts in json.loads(raw)]
        except (ValueError, TypeError, AttributeError) as exc:
            log.error("game %s: unreadable remembered alerts of team %s dropped (%s)", key, team_id, exc)
            return []

    async def pop_alerts(self, key: str, team_id: str) -> None:
        """Forget the team's newest remembered alerts (a correction took them back)."""
        kept = await self.alerts(key, team_id)
        rows = [[o.to_dict() for o in alerts] for alerts in kept[:-1]]
        await self._redis.hset(self._keys.game_state(key), f"alerts:{team_id}", json.dumps(rows))
