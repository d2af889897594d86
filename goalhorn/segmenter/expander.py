"""Streaming audience expansion: segment sets are read with SSCAN in chunks and turned into batches
of at most ``batch_size`` devices of one platform as they fill, so the first batch can go out before
the last member is read. A user reached through two segments (or returned twice by SSCAN, which may
repeat members) is expanded once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from goalhorn.errors import ConfigError
from goalhorn.keys import PLATFORMS, Keys, Platform
from goalhorn.models import DeliveryBatch, Device, Intent
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis

_TEAM_FOLLOWERS = re.compile(r"^team:(?P<team_id>[^:\s]+):followers$")


def source_key(keys: Keys, segment: str) -> str:
    """The Redis set behind a resolved segment name."""
    match = _TEAM_FOLLOWERS.match(segment)
    if match is None:
        raise ConfigError(f"unknown segment source {segment!r} (expected team:<id>:followers)")
    return keys.team_followers(match["team_id"])


@dataclass(slots=True)
class ExpansionStats:
    users: int = 0
    users_without_devices: int = 0
    devices: int = 0
    batches: int = 0


class Expander:
    """Expands intents into delivery batches."""

    def __init__(self, redis: Redis, keys: Keys, *, chunk: int = 1000, batch_size: int = 500) -> None:
        self._redis = redis
        self._keys = keys
        self._store = PreferenceStore(redis, keys)
        self._chunk = chunk
        self._batch_size = batch_size

    async def expand(self, intent: Intent, stats: ExpansionStats | None = None) -> AsyncIterator[DeliveryBatch]:
        """Yield the intent's batches; ``stats`` (if given) is filled in as it goes."""
        stats = stats if stats is not None else ExpansionStats()
        seen: set[bytes] = set()
        buffers: dict[Platform, list[Device]] = {platform: [] for platform in PLATFORMS}

        def cut(platform: Platform) -> DeliveryBatch:
            devices, buffers[platform] = buffers[platform], []
            stats.batches += 1
            return DeliveryBatch(
                batch_id=f"{intent.intent_id}.{platform}.{stats.batches}",
                platform=platform,
                intent=intent,
                devices=tuple(devices),
            )

        for key in [source_key(self._keys, segment) for segment in intent.segments]:
            cursor = 0
            while True:
                cursor, raw = await self._redis.sscan(key, cursor, count=self._chunk)
                members = cast(list[bytes], raw)  # the client does not decode responses
                fresh = [m for m in members if m not in seen]
                seen.update(fresh)
                if fresh:
                    per_user = await self._store.devices_of_many([m.decode() for m in fresh])
                    stats.users += len(fresh)
                    for devices in per_user:
                        if not devices:
                            stats.users_without_devices += 1
                        for device in devices:
                            stats.devices += 1
                            buffer = buffers[device.platform]
                            buffer.append(device)
                            if len(buffer) >= self._batch_size:
                                yield cut(device.platform)
                if cursor == 0:
                    break
        for platform in PLATFORMS:
            if buffers[platform]:
                yield cut(platform)
