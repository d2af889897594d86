"""Concurrent writers of the same users never lose an update: hundreds of mixed edits through two
stores (two clients, as two processes would have) end where a serial replay of the same edits ends."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from functools import partial

import pytest

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


async def test_register_device_adds_stamps_keeps_added_at_and_holds_the_limit(settings: Settings, redis: Redis) -> None:
    from datetime import UTC, datetime

    from goalhorn.preferences.store import DeviceLimit

    store = PreferenceStore(redis, Keys(settings.namespace), buckets=4)
    first = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    later = datetime(2026, 5, 2, 12, 0, tzinfo=UTC)
    assert await store.register_device(device("u1", 1), max_devices=2, now=first) is True
    assert await store.register_device(device("u1", 2), max_devices=2, now=first) is True
    # the same device again: replaced (a new address), added_at kept, seen now
    moved = device("u1", 1).model_copy(update={"address": "moved" + "y" * 120})
    assert await store.register_device(moved, max_devices=2, now=later) is False
    with pytest.raises(DeviceLimit):
        await store.register_device(device("u1", 3), max_devices=2, now=later)
    stored = {d.device_id: d for d in await store.devices_of("u1")}
    assert sorted(stored) == ["d1", "d2"]
    assert stored["d1"].address == moved.address
    assert stored["d1"].added_at == first
    assert stored["d2"] == device("u1", 2).model_copy(update={"added_at": first})
    assert await store.last_seen("u1") == {"d1": later, "d2": first}
