"""Concurrent writers of the same users never lose an update: hundreds of mixed edits through two
stores (two clients, as two processes would have) end where a serial replay of the same edits ends."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from functools import partial

from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.preferences.model import Preferences
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis, make_redis
from goalhorn.settings import Settings

Edit = Callable[[PreferenceStore], Awaitable[object]]


def device(user: str, n: int) -> Device:
    return Device(platform="fcm", device_id=f"d{n}", user_id=user, address=f"token-{n:04d}" + "x" * 120)


async def mute_team(user: str, team: str, store: PreferenceStore) -> None:
    await store.mute_team(user, team)


async def mute_match(user: str, match: str, store: PreferenceStore) -> None:
    await store.mute_match(user, match)


async def add_device(user: str, n: int, store: PreferenceStore) -> None:
    await store.add_devices([device(user, n)])


def mixed_edits(users: list[str], per_user: int) -> list[Edit]:
    """Edits whose end result does not depend on their order (each touches its own element), so a lost
    update shows as a missing element, whatever order the concurrent run took."""
    edits: list[Edit] = []
    for user in users:
        for n in range(per_user):
            kind = n % 4
            if kind == 0:
                edits.append(partial(mute_team, user, f"team{n}"))
            elif kind == 1:
                edits.append(partial(add_device, user, n))
            elif kind == 2:
                edits.append(partial(mute_match, user, f"match{n}"))
            else:
                # a device added and then removed by the same edit, and a team muted then unmuted
                async def add_remove(s: PreferenceStore, u: str = user, n: int = n) -> None:
                    await s.add_devices([device(u, n)])
                    await s.mute_team(u, f"gone{n}")
                    await s.remove_device(u, f"d{n}")
                    await s.unmute_team(u, f"gone{n}")

                edits.append(add_remove)
    return edits


Snapshot = dict[str, tuple[list[str], Preferences, list[str]]]


async def snapshot(store: PreferenceStore, users: list[str]) -> Snapshot:
    out: Snapshot = {}
    for user in users:
        devices = sorted(d.device_id for d in await store.devices_of(user))
        out[user] = (devices, await store.preferences_of(user), sorted(await store.last_seen(user)))
    return out


async def test_concurrent_edits_through_two_stores_match_a_serial_replay(settings: Settings, redis: Redis) -> None:
    keys = Keys(settings.namespace)
    other = make_redis(settings)
    try:
        stores = [PreferenceStore(redis, keys, buckets=4), PreferenceStore(other, keys, buckets=4)]
        users = ["alice", "bob", "carol"]
        edits = mixed_edits(users, 100)
        random.Random(7).shuffle(edits)
        in_flight = asyncio.Semaphore(48)  # within a client's connection pool, as a server's workers would be

        async def run(i: int, edit: Edit) -> None:
            async with in_flight:
                await edit(stores[i % 2])

        await asyncio.gather(*(run(i, edit) for i, edit in enumerate(edits)))
        concurrent = await snapshot(stores[0], users)

        replay_keys = Keys(settings.namespace + "-serial")
        serial = PreferenceStore(redis, replay_keys, buckets=4)
        try:
            for edit in edits:
                await edit(serial)
            expected = await snapshot(serial, users)
        finally:
            async for key in redis.scan_iter(match=f"{replay_keys.namespace}:*"):
                await redis.delete(key)
    finally:
        await other.aclose()
    assert concurrent == expected
    devices, prefs, _ = expected["alice"]
    assert len(devices) == 25
    assert (len(prefs.muted_teams), len(prefs.muted_matches)) == (25, 25)
