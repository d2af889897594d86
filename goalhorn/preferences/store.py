"""Read and write users, devices and follows in Redis.

Layout (names in ``goalhorn.keys``): a SET of user ids per followed team, a HASH of compact
``Device`` JSON per user, and a SET of every user id. Writes keep these in step; reads for
expansion fetch the devices of a whole chunk of users in one pipelined round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.redis_client import Redis


class PreferenceStore:
    """The subscriber side of goalhorn, over one Redis."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def add_devices(self, devices: Iterable[Device]) -> int:
        """Register (or replace) devices; returns how many were written."""
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for device in devices:
            pipe.hset(self._keys.user_devices(device.user_id), device.device_id, device.to_json())
            pipe.sadd(self._keys.users(), device.user_id)
            count += 1
        await pipe.execute()
        return count

    async def remove_device(self, user_id: str, device_id: str) -> bool:
        """Forget a device (e.g. its token was unregistered); True if it existed."""
        return bool(await self._redis.hdel(self._keys.user_devices(user_id), device_id))

    async def follow_teams(self, follows: Iterable[tuple[str, str]]) -> None:
        """Record ``(user_id, team_id)`` follows."""
        pipe = self._redis.pipeline(transaction=False)
        for user_id, team_id in follows:
            pipe.sadd(self._keys.team_followers(team_id), user_id)
            pipe.sadd(self._keys.users(), user_id)
        await pipe.execute()

    async def unfollow_team(self, user_id: str, team_id: str) -> None:
        await self._redis.srem(self._keys.team_followers(team_id), user_id)

    async def devices_of(self, user_id: str) -> list[Device]:
        return (await self.devices_of_many([user_id]))[0]

    async def devices_of_many(self, user_ids: Sequence[str]) -> list[list[Device]]:
        """Each user's devices, in the order of ``user_ids``, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hvals(self._keys.user_devices(user_id))
        rows: list[list[bytes]] = await pipe.execute()
        return [[Device.from_json(raw) for raw in row] for row in rows]
