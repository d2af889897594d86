"""Per-user caps: at most N alerts about one match within a sliding window, counted across intents.

Each match has one HASH (user id -> ``"<ms>:<intent_id>,..."``) of the alerts its capped users were
counted for; a Lua script checks and records a whole chunk of users atomically in one call. An intent
counted once is allowed again without being counted twice, so a redelivered intent re-expands to the
same recipients.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from goalhorn.keys import Keys
from goalhorn.preferences.model import Cap
from goalhorn.redis_client import Redis

# KEYS[1] caps hash; ARGV: now_ms, intent_id, record (1/0), ttl_ms, then (user, max, window_ms)...
_CHECK = """
local now, intent, record, ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 3 do
  local user, limit, window = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local raw = redis.call('HGET', KEYS[1], user)
  local kept, count, already = {}, 0, false
  if raw then
    for ts, id in string.gmatch(raw, '(%d+):([^,]+)') do
      if tonumber(ts) > now - window then
        kept[#kept + 1] = ts .. ':' .. id
        count = count + 1
        if id == intent then already = true end
      end
    end
  end
  if already then
    out[#out + 1] = 1
  elseif count < limit then
    out[#out + 1] = 1
    if record then
      kept[#kept + 1] = now .. ':' .. intent
      redis.call('HSET', KEYS[1], user, table.concat(kept, ','))
    end
  else
    out[#out + 1] = 0
  end
end
if record and #ARGV > 4 and redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return out
"""


class CapCounter:
    """Checks and counts capped users' alerts per match."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._script = redis.register_script(_CHECK)

    async def admit(
        self, game_id: str, intent_id: str, users: Sequence[tuple[str, Cap]], now: datetime, *, record: bool = True
    ) -> list[bool]:
        """Which of ``users`` may get this intent; those admitted are counted unless ``record`` is off."""
        if not users:
            return []
        ttl_ms = max(cap.window_s for _, cap in users) * 1000
        args: list[str | int] = [int(now.timestamp() * 1000), intent_id, int(record), ttl_ms]
        for user_id, cap in users:
            args += [user_id, cap.max_alerts, cap.window_s * 1000]
        result = cast(list[int], await self._script(keys=[self._keys.caps(game_id)], args=args))
        return [bool(flag) for flag in result]
