"""Who a Live Activity intent (``live:<game key>``) reaches: the fanout's expander over the registry.

Updates go to the game's channel, its activities' update tokens and its Android registrations;
a start goes to the push-to-start tokens and FCM devices of the eligible followers of both teams,
once per user and game, under the per-user budget; no token twice; nobody registered is no error.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from goalhorn.app.fanout import live_registry, make_expander
from goalhorn.catalog import default_catalog
from goalhorn.errors import ConfigError
from goalhorn.keys import Keys
from goalhorn.liveactivities.registry import Channel, LiveRegistry
from goalhorn.models import DeliveryBatch, Device, EventKind, Intent, Sport, utcnow
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis
from goalhorn.segmenter.epoch_watch import EpochWatch, SubscriberDataLost
from goalhorn.segmenter.expander import Expander, ExpansionStats
from goalhorn.settings import Settings

GAME = "espn:401"


def hexa(n: int) -> str:
    return f"{n:064x}"


def fcm(n: int) -> str:
    return f"fcm-token-{n:04d}-" + "x" * 100


def live_intent(event: str, intent_id: str, *, game: str = GAME) -> Intent:
    now = utcnow()
    aps: dict[str, object] = {"event": event, "timestamp": int(now.timestamp()), "content-state": {"home_score": 0}}
    data = {
        "apns_push_type": "liveactivity",
        "live_update": json.dumps({"activity_id": game, "event": event}),
        "activity_id": game,
        "live_event": event,
    }
    if event == "start":
        aps["attributes-type"] = "GameActivityAttributes"
        aps["attributes"] = {"game_id": game, "home_team_id": "h", "away_team_id": "a"}
    data["liveactivity"] = json.dumps(aps)
    return Intent(
        intent_id=intent_id,
        event_id=f"live:{game}:{intent_id}",
        kind=EventKind.GAME_START if event == "start" else EventKind.LIVE_UPDATE,
        sport=Sport.SOCCER,
        game_id=game,
        priority=9,
        segments=(f"live:{game}",),
        template="liveactivity",
        data=data,
        collapse_key=f"live:{game}",
        event_at=now,
        created_at=now,
        expires_at=now + timedelta(minutes=10),
    )


def expander_of(settings: Settings, redis: Redis) -> Expander:
    catalog = default_catalog()
    return make_expander(settings, redis, lambda: catalog)


async def sent(expander: Expander, intent: Intent, stats: ExpansionStats | None = None) -> list[DeliveryBatch]:
    return [
        DeliveryBatch.from_json(b.payload)
        async for b in expander.expand(intent, stats if stats is not None else ExpansionStats())
    ]


def addresses(batches: list[DeliveryBatch]) -> list[str]:
    return [d.address for b in batches for d in b.devices]


async def test_an_update_reaches_the_channel_update_tokens_and_android_registrations_once(
    redis: Redis, settings: Settings
) -> None:
    registry = live_registry(settings, redis)
    await registry.keep_channel(Channel(GAME, "chan-1", 0, 1.0))
    await registry.set_update_token("acme/u1", GAME, hexa(1))
    await registry.set_update_token("acme/u2", GAME, hexa(2))
    await registry.set_update_token("acme/u3", GAME, hexa(2).upper())  # the same phone under two accounts
    await registry.set_update_token("acme/u4", "espn:other", hexa(4))
    await registry.set_android("acme/u5", GAME, fcm(5))
    stats = ExpansionStats()
    batches = await sent(expander_of(settings, redis), live_intent("update", "up-1"), stats)
    got = addresses(batches)
    assert sorted(got) == sorted(["channel:chan-1", hexa(1), hexa(2), fcm(5)])
    channel = next(d for b in batches for d in b.devices if d.address == "channel:chan-1")
    assert channel.device_id == channel.user_id == f"channel:{GAME}"
    assert stats.live_broadcasts == 1
    assert {b.platform for b in batches if fcm(5) in addresses([b])} == {"fcm"}
    assert stats.devices == 4
    assert all(b.intent.data.get("input_push_channel") is None for b in batches)


async def test_a_game_nobody_registered_for_expands_to_nothing_without_error(redis: Redis, settings: Settings) -> None:
    stats = ExpansionStats()
    assert await sent(expander_of(settings, redis), live_intent("update", "up-2"), stats) == []
    assert await sent(expander_of(settings, redis), live_intent("start", "st-0"), stats) == []
    assert stats.devices == 0


async def follow(store: PreferenceStore, user: str, *teams: str) -> None:
    await store.follow_teams([(user, team) for team in teams])


async def test_a_start_reaches_eligible_followers_of_both_teams_once_with_the_channel(
    redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=settings.preference_buckets)
    registry = live_registry(settings, redis)
    await registry.keep_channel(Channel(GAME, "chan-9", 0, 1.0))
    for n, teams in {1: ("h",), 2: ("a",), 3: ("h", "a"), 4: ("h",), 5: ("a",), 6: ("h",), 7: ("z",)}.items():
        await follow(store, f"acme/u{n}", *teams)
        await registry.set_start_token(f"acme/u{n}", "GameActivityAttributes", hexa(n))
    await store.mute_team("acme/u4", "h")  # muted the team it follows: no start
    await store.mute_team("acme/u5", "h")  # muted the other team: still a start for its own
    await registry.set_update_token("acme/u6", GAME, hexa(60))  # its activity is running already
    await registry.set_start_token("acme/u8", "OtherAttributes", hexa(8))
    await follow(store, "acme/u8", "h")  # a token of another activity type: none
    android = Device(platform="fcm", device_id="d-and", user_id="acme/u2", address=fcm(2))
    await store.add_devices([android])
    await registry.set_android("acme/u9", GAME, fcm(9))
    stats = ExpansionStats()
    expander = expander_of(settings, redis)
    batches = await sent(expander, live_intent("start", "st-1"), stats)
    got = addresses(batches)
    assert sorted(got) == sorted([hexa(1), hexa(2), hexa(3), hexa(5), fcm(2), fcm(9)])
    assert len(got) == len(set(got))
    assert "channel:chan-9" not in got  # a start is for push-to-start tokens only
    assert hexa(60) not in got
    assert all(b.intent.data["input_push_channel"] == "chan-9" for b in batches if b.platform == "apns")
    assert stats.suppressed["muted"] == 1
    start = next(d for b in batches for d in b.devices if d.address == hexa(1))
    assert start.device_id == f"la:start:acme/u1:{GAME}"
    # The same intent again (a redelivery) reaches the same people; another start of the game nobody.
    assert sorted(addresses(await sent(expander, live_intent("start", "st-1")))) == sorted(got)
    assert addresses(await sent(expander, live_intent("start", "st-2"))) == [fcm(9)]


async def test_starts_per_user_are_capped_in_their_window(redis: Redis, settings: Settings) -> None:
    settings = settings.model_copy(update={"live_starts_per_user": 2})
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    registry = live_registry(settings, redis)
    await follow(store, "acme/u1", "h")
    await registry.set_start_token("acme/u1", "GameActivityAttributes", hexa(1))
    expander = expander_of(settings, redis)
    stats = [ExpansionStats() for _ in range(3)]
    reached = [
        addresses(await sent(expander, live_intent("start", f"st-{n}", game=f"espn:{n}"), stats[n])) for n in range(3)
    ]
    assert reached == [[hexa(1)], [hexa(1)], []]
    assert [s.live_starts_over_budget for s in stats] == [0, 0, 1], "a skipped start is counted, not only logged"


async def test_an_activity_the_app_started_gets_no_start_and_spends_no_budget(redis: Redis, settings: Settings) -> None:
    settings = settings.model_copy(update={"live_starts_per_user": 1})
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    registry = live_registry(settings, redis)
    await follow(store, "acme/u1", "h")
    await registry.set_start_token("acme/u1", "GameActivityAttributes", hexa(1))
    assert await registry.mark_running("acme/u1", GAME)  # started in the app, on the channel
    assert not await registry.mark_running("acme/u1", GAME)
    expander = expander_of(settings, redis)
    stats = ExpansionStats()
    assert addresses(await sent(expander, live_intent("start", "st-1"), stats)) == []
    assert (stats.live_starts_repeated, stats.live_starts_over_budget) == (1, 0)
    assert addresses(await sent(expander, live_intent("start", "st-2", game="espn:other"))) == [hexa(1)]


async def test_a_start_without_a_budget_for_previews_records_nothing(redis: Redis, settings: Settings) -> None:
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    registry = live_registry(settings, redis)
    await follow(store, "acme/u1", "h")
    await registry.set_start_token("acme/u1", "GameActivityAttributes", hexa(1))
    expander = expander_of(settings, redis)
    preview = [b async for b in expander.expand(live_intent("start", "st-a"), ExpansionStats(), dry_run=True)]
    assert len(preview) == 1
    assert addresses(await sent(expander, live_intent("start", "st-b"))) == [hexa(1)]


async def test_an_expander_without_live_activities_refuses_a_live_intent(redis: Redis, settings: Settings) -> None:
    catalog = default_catalog()
    expander = Expander(redis, Keys(settings.namespace), lambda: catalog)
    with pytest.raises(ConfigError, match="Live Activities are off"):
        expander.segments_of(live_intent("update", "up-3"))


async def test_registrations_lost_with_redis_hold_the_intent(redis: Redis, settings: Settings) -> None:
    """Registrations stamp the subscriber epoch (the fanout checks it around every expansion): Redis
    that comes back without them fails closed instead of expanding the game to nobody."""
    keys = Keys(settings.namespace)
    registry = LiveRegistry(redis, keys, buckets=settings.preference_buckets)
    await registry.set_update_token("acme/u1", GAME, hexa(1))
    watch = EpochWatch(redis, keys, buckets=settings.preference_buckets)
    assert await watch.check() is not None
    await redis.delete(keys.subscriber_epoch(), keys.la_update_tokens(GAME))  # Redis restarted empty
    with pytest.raises(SubscriberDataLost):
        await watch.check()
