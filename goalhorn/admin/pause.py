"""Pausing and resuming a provider: the flags every delivery worker reads (``goalhorn.dispatch.pause``
says what a worker does with them, and within what time)."""

from __future__ import annotations

import json

from goalhorn.dispatch.pause import POLL_S, paused
from goalhorn.keys import Keys, Platform
from goalhorn.models import utcnow
from goalhorn.redis_client import Redis

__all__ = ["POLL_S", "pause", "paused", "resume"]


async def pause(redis: Redis, keys: Keys, platform: Platform, by: str, reason: str = "") -> None:
    entry = {"since": utcnow().isoformat(), "by": by, "reason": reason}
    await redis.hset(keys.paused(), platform, json.dumps(entry, separators=(",", ":")))


async def resume(redis: Redis, keys: Keys, platform: Platform) -> bool:
    """Lift a pause; False if the provider was not paused."""
    return bool(await redis.hdel(keys.paused(), platform))
