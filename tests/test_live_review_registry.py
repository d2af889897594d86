"""Review of the Live Activity registry (issue 15): a user's two devices.

A Live Activity is per device: a fan watching the game on an iPhone and an iPad has two activities,
each with its own update token (and an Android phone and tablet two registrations). The registry kept
one update token per (user, game), and a new one *retired* the one it replaced: the iPad registering
its token silenced the iPhone's activity for the rest of the game, and the iPhone saying its token
again was refused (409), so the two devices took turns. Now the app names its device (its install
id, ``device``): one token per (user, game, device), rotation and retirement within one device.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from typer.testing import CliRunner

from goalhorn.app.fanout import live_registry
from goalhorn.keys import Keys
from goalhorn.liveactivities.registry import LiveRegistry, TokenRejected
from goalhorn.models import Device
from goalhorn.ops.cli import app
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis, make_redis
from goalhorn.segmenter.expander import ExpansionStats
from goalhorn.settings import Settings
from tests.processes import real_env
from tests.support.api import Api, running_api
from tests.test_live_audience import GAME, addresses, expander_of, fcm, hexa, live_intent, sent

IPHONE, IPAD = hexa(0xA1), hexa(0xB2)
PHONE_ID, TABLET_ID = "6F9619FF-8B86-D011-B42D-00C04FC964FF", "fid_c2V0dGluZ3M-x.1"


async def test_both_devices_of_a_user_get_the_games_updates(redis: Redis, settings: Settings) -> None:
    registry = live_registry(settings, redis)
    await registry.set_update_token("acme/u1", GAME, IPHONE, PHONE_ID)
    await registry.set_update_token("acme/u1", GAME, IPAD, TABLET_ID)  # the same fan's iPad, an activity of its own
    await registry.set_android("acme/u1", GAME, fcm(1), PHONE_ID)
    await registry.set_android("acme/u1", GAME, fcm(2), TABLET_ID)  # and an Android tablet
    try:
        assert await registry.set_update_token("acme/u1", GAME, IPHONE, PHONE_ID) == "unchanged"  # said again
    except TokenRejected:
        pytest.fail("the iPhone's own token, still alive, was refused as a rotated one")
    batches = await sent(expander_of(settings, redis), live_intent("update", "up-1"))
    assert sorted(addresses(batches)) == sorted([IPHONE, IPAD, fcm(1), fcm(2)])
    ids = {d.address: d.device_id for b in batches for d in b.devices}
    assert ids[IPAD] == f"la:update:acme/u1:{GAME}#{TABLET_ID}"  # each its own delivery marker
    assert ids[fcm(1)] == f"la:android:acme/u1:{GAME}#{PHONE_ID}"


async def test_rotation_and_retirement_stay_within_one_device(redis: Redis, settings: Settings) -> None:
    registry = live_registry(settings, redis)
    await registry.set_update_token("acme/u1", GAME, IPHONE, PHONE_ID)
    await registry.set_update_token("acme/u1", GAME, IPAD, TABLET_ID)
    assert await registry.set_update_token("acme/u1", GAME, hexa(0xA2), PHONE_ID) == "replaced"  # iPhone rotates
    with pytest.raises(TokenRejected, match="replaced"):
        await registry.set_update_token("acme/u1", GAME, IPHONE, PHONE_ID)  # its old one, late
    assert await registry.update_tokens(GAME) == {
        f"acme/u1#{PHONE_ID}": hexa(0xA2),
        f"acme/u1#{TABLET_ID}": IPAD,  # untouched
    }
    assert await registry.delete_update_token("acme/u1", GAME, TABLET_ID)  # the iPad's activity ended
    assert not await registry.delete_update_token("acme/u1", GAME, TABLET_ID)
    assert await registry.update_devices(GAME) == {"acme/u1": {PHONE_ID: hexa(0xA2)}}
    with pytest.raises(TokenRejected, match="device id"):
        await registry.set_android("acme/u1", GAME, fcm(1), "a#b")


async def test_no_device_keeps_one_registration_per_user_and_game(redis: Redis, settings: Settings) -> None:
    registry = live_registry(settings, redis)
    await registry.set_update_token("acme/u1", GAME, IPHONE)
    assert await registry.set_update_token("acme/u1", GAME, IPAD) == "replaced"  # as before: IPHONE retired
    with pytest.raises(TokenRejected):
        await registry.set_update_token("acme/u1", GAME, IPHONE)
    assert await registry.update_tokens(GAME) == {"acme/u1": IPAD}
    batches = await sent(expander_of(settings, redis), live_intent("update", "up-2"))
    assert [d.device_id for b in batches for d in b.devices] == [f"la:update:acme/u1:{GAME}"]


async def test_a_dead_token_of_one_device_is_forgotten_the_other_kept(redis: Redis, settings: Settings) -> None:
    registry = live_registry(settings, redis)
    game = "sr:match#7"  # a game key with '#' in it
    await registry.set_update_token("acme/u1", game, IPHONE, PHONE_ID)
    await registry.set_update_token("acme/u1", game, IPAD, TABLET_ID)
    await registry.set_android("acme/u1", game, fcm(1))
    assert not await registry.forget_dead(f"la:update:acme/u1:{game}#{PHONE_ID}", "acme/u1", IPAD)  # not its token
    assert await registry.forget_dead(f"la:update:acme/u1:{game}#{PHONE_ID}", "acme/u1", IPHONE)
    assert await registry.forget_dead(f"la:android:acme/u1:{game}", "acme/u1", fcm(1))
    assert await registry.update_tokens(game) == {f"acme/u1#{TABLET_ID}": IPAD}
    assert await registry.android(game) == {}


async def test_a_user_watching_on_any_device_gets_no_start(redis: Redis, settings: Settings) -> None:
    registry = live_registry(settings, redis)
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    await store.follow_teams([("acme/u1", "h"), ("acme/u2", "h")])
    for user, n in (("acme/u1", 1), ("acme/u2", 2)):
        await registry.set_start_token(user, "GameActivityAttributes", hexa(n))
    await registry.set_update_token("acme/u1", GAME, IPAD, TABLET_ID)  # the iPad shows the game already
    await store.add_devices([Device(platform="fcm", device_id="d2", user_id="acme/u2", address=fcm(20))])
    await registry.set_android("acme/u2", GAME, fcm(2), TABLET_ID)  # the tablet shows it
    stats = ExpansionStats()
    got = addresses(await sent(expander_of(settings, redis), live_intent("start", "st-1"), stats))
    assert got == [fcm(2)]  # the registration itself, no start to anyone
    assert stats.live_starts_repeated == 2


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings) as api:
        yield api
        redis = api.app.state.services.redis
        async for key in redis.scan_iter(match=Keys(settings.namespace).pattern()):
            await redis.delete(key)


async def test_the_api_takes_the_device(api: Api, settings: Settings) -> None:
    client = await api.as_tenant("acme")
    assert (await client.put("/v1/users/u1", json={})).status_code == 201
    registry = LiveRegistry(api.app.state.services.redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    update = f"/v1/users/u1/live-activities/games/{GAME}/update-token"
    android = f"/v1/users/u1/live-activities/games/{GAME}/android"
    assert (await client.put(update, json={"token": IPHONE, "device": PHONE_ID})).status_code == 201
    assert (await client.put(update, json={"token": IPAD, "device": TABLET_ID})).status_code == 201
    again = await client.put(update, json={"token": IPHONE, "device": PHONE_ID})
    assert (again.status_code, again.json()) == (200, {"result": "unchanged"})
    assert (await client.put(android, json={"token": fcm(1), "device": TABLET_ID})).status_code == 201
    for device in ("a b", "x" * 65, 7):
        bad = await client.put(update, json={"token": IPHONE, "device": device})
        assert bad.status_code == 422, bad.text
        assert "device" in bad.text
    assert (await client.delete(update, params={"device": TABLET_ID})).status_code == 204
    assert (await client.delete(update)).status_code == 404  # no registration without a device
    assert (await client.delete(android, params={"device": "a#b"})).status_code == 422
    assert (await client.delete(android, params={"device": TABLET_ID})).status_code == 204
    assert await registry.update_devices(GAME) == {"acme/u1": {PHONE_ID: IPHONE}}
    assert (await client.put(update, json={"token": IPAD, "device": TABLET_ID})).status_code == 409  # ended: dead


@pytest.mark.real
def test_goalhorn_live_game_shows_each_device() -> None:
    env = real_env()
    settings = Settings(redis_url=env["GOALHORN_REDIS_URL"], namespace=env["GOALHORN_NAMESPACE"])

    async def register() -> None:
        redis = make_redis(settings)
        try:
            registry = live_registry(settings, redis)
            await registry.set_update_token("acme/u1", GAME, IPHONE, PHONE_ID)
            await registry.set_update_token("acme/u1", GAME, IPAD, TABLET_ID)
            await registry.set_android("acme/u2", GAME, fcm(2))
        finally:
            await redis.aclose()

    asyncio.run(register())
    shown = CliRunner().invoke(app, ["live", "game", GAME, "--json", "--devices"], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == {
        "game_id": GAME,
        "channel_id": None,
        "update_tokens": 2,
        "android_registrations": 1,
        "devices": [
            {"user": "acme/u1", "device": PHONE_ID, "kind": "update"},
            {"user": "acme/u1", "device": TABLET_ID, "kind": "update"},
            {"user": "acme/u2", "device": "", "kind": "android"},
        ],
    }
    table = CliRunner().invoke(app, ["live", "game", GAME, "--devices"], env=env, terminal_width=200)
    assert "update_tokens: 2" in table.output
    assert TABLET_ID in table.output
