"""Preferences: the library API on both backends, quiet hours across midnight and DST, caps across
intents, and the Bloom prefilter's versions and pending users."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from goalhorn.errors import ConfigError
from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.caps import CapCounter
from goalhorn.preferences.model import DEFAULT_PREFERENCES, Cap, Preferences, QuietHours
from goalhorn.preferences.quiet_hours import is_quiet
from goalhorn.preferences.reader import bucket_of
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings


def phone(user: str, n: int = 0, platform: str = "fcm", locale: str = "en") -> Device:
    return Device(device_id=f"{user}-{n}", user_id=user, platform=platform, address=f"tok{n}", locale=locale)


async def test_devices_are_added_replaced_touched_and_removed(redis: Redis, settings: Settings) -> None:
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=4)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert await store.add_devices([phone("a"), phone("a", 1, "apns"), phone("b")], now=t0) == 3
    later = t0 + timedelta(days=1)
    await store.add_devices([phone("a", 1, "apns", locale="fr")], now=later)  # same device, new locale
    devices = {d.device_id: d for d in await store.devices_of("a")}
    assert set(devices) == {"a-0", "a-1"}
    assert devices["a-1"].locale == "fr"
    assert devices["a-1"].added_at == t0, "re-registering keeps the first added time"
    assert (await store.last_seen("a"))["a-1"] == later
    assert await store.touch_device("a", "a-0", t0 + timedelta(days=2))
    assert (await store.last_seen("a"))["a-0"] == t0 + timedelta(days=2)
    assert not await store.touch_device("a", "nope")
    assert await store.remove_device("a", "a-0")
    assert not await store.remove_device("a", "a-0")
    assert [d.device_id for d in await store.devices_of("a")] == ["a-1"]
    assert await store.remove_device("b", "b-0")
    assert await store.devices_of("b") == []


async def test_follows_and_watches_are_sets_the_segments_read(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys)
    await store.follow_teams([("a", "t1"), ("b", "t1"), ("a", "t2")])
    await store.watch_matches([("c", "g1")])
    await store.watch_markets([("bot", "tok")])
    await store.follow_sports([("d", "soccer")])
    await store.unfollow_team("b", "t1")
    assert await redis.smembers(keys.team_followers("t1")) == {b"a"}
    assert await redis.smembers(keys.match_watchers("g1")) == {b"c"}
    assert await redis.smembers(keys.market_watchers("tok")) == {b"bot"}
    assert await redis.smembers(keys.sport_fans("soccer")) == {b"d"}
    await store.unwatch_match("c", "g1")
    await store.unwatch_market("bot", "tok")
    assert await redis.scard(keys.match_watchers("g1")) == 0


async def test_preferences_round_trip_and_defaults_take_no_space(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=4)
    await store.mute_team("a", "t1")
    await store.opt_in("a", "GAME_END")
    prefs = await store.opt_out("a", "GOAL")
    prefs = await store.update_preferences("a", time_zone="Asia/Tokyo", quiet_hours=QuietHours(22 * 60, 7 * 60))
    prefs = await store.update_preferences("a", cap=Cap(2, 600))
    assert await store.preferences_of("a") == prefs
    assert prefs.muted_teams == {"t1"}
    assert prefs.opted_in == {"GAME_END"}
    assert prefs.opted_out == {"GOAL"}
    assert await store.opt_in("a", "GOAL") == prefs.with_changes(opted_in={"GAME_END", "GOAL"}, opted_out=frozenset())
    bucket = keys.preference_bucket(bucket_of("a", 4))
    assert await redis.hexists(bucket, "a")
    await store.set_preferences({"a": DEFAULT_PREFERENCES})
    assert not await redis.hexists(bucket, "a"), "a user back on the defaults has no record"
    assert await store.preferences_of("a") == DEFAULT_PREFERENCES
    assert await redis.sismember(keys.bloom_pending(), "a")


@pytest.mark.parametrize(
    ("zone", "quiet", "at", "expected"),
    [
        # 22:00-07:00 wraps midnight
        ("Europe/London", (22 * 60, 7 * 60), datetime(2026, 1, 10, 23, 30, tzinfo=UTC), True),
        ("Europe/London", (22 * 60, 7 * 60), datetime(2026, 1, 10, 6, 59, tzinfo=UTC), True),
        ("Europe/London", (22 * 60, 7 * 60), datetime(2026, 1, 10, 7, 0, tzinfo=UTC), False),
        ("Europe/London", (22 * 60, 7 * 60), datetime(2026, 7, 10, 6, 30, tzinfo=UTC), False),  # 07:30 BST
        # New York springs forward on 2026-03-08 at 07:00 UTC: 06:30 local becomes 07:30 one hour later
        ("America/New_York", (22 * 60, 7 * 60), datetime(2026, 3, 8, 11, 30, tzinfo=UTC), False),  # 07:30 EDT
        ("America/New_York", (22 * 60, 7 * 60), datetime(2026, 3, 7, 11, 30, tzinfo=UTC), True),  # 06:30 EST
        # ... and falls back on 2026-11-01 at 06:00 UTC: 01:30 happens twice, both quiet for 01:00-02:00
        ("America/New_York", (60, 120), datetime(2026, 11, 1, 5, 30, tzinfo=UTC), True),
        ("America/New_York", (60, 120), datetime(2026, 11, 1, 6, 30, tzinfo=UTC), True),
        ("America/New_York", (60, 120), datetime(2026, 11, 1, 7, 30, tzinfo=UTC), False),
        # Sydney's DST is in the southern summer; Kathmandu is +05:45; Lord Howe shifts by 30 minutes
        ("Australia/Sydney", (0, 6 * 60), datetime(2026, 1, 10, 13, 30, tzinfo=UTC), True),  # 00:30 AEDT
        ("Australia/Sydney", (0, 6 * 60), datetime(2026, 7, 10, 13, 30, tzinfo=UTC), False),  # 23:30 AEST
        ("Asia/Kathmandu", (23 * 60 + 50, 10), datetime(2026, 5, 1, 18, 10, tzinfo=UTC), True),  # 23:55
        ("Asia/Kathmandu", (23 * 60 + 50, 10), datetime(2026, 5, 1, 18, 30, tzinfo=UTC), False),  # 00:15
        ("Australia/Lord_Howe", (8 * 60, 9 * 60), datetime(2026, 1, 10, 21, 15, tzinfo=UTC), True),  # 08:15 +11
        ("Australia/Lord_Howe", (8 * 60, 9 * 60), datetime(2026, 7, 10, 21, 15, tzinfo=UTC), False),  # 07:45 +10:30
        ("UTC", (600, 600), datetime(2026, 7, 10, 10, 0, tzinfo=UTC), False),  # an empty window
    ],
)
def test_quiet_hours_follow_the_users_wall_clock(zone, quiet, at, expected) -> None:
    assert is_quiet(QuietHours(*quiet), zone, at) is expected


async def test_an_unknown_time_zone_is_refused_and_nothing_is_written(redis: Redis, settings: Settings) -> None:
    store = PreferenceStore(redis, Keys(settings.namespace))
    with pytest.raises(ConfigError, match="unknown time zone 'Nowhere/Land'"):
        await store.set_preferences(
            {"a": Preferences(muted_teams=frozenset({"t"})), "b": Preferences(time_zone="Nowhere/Land")}
        )
    assert await store.preferences_of("a") == DEFAULT_PREFERENCES


def test_bad_quiet_hours_and_zones_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="minute of the day"):
        QuietHours(0, 1440)
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        is_quiet(QuietHours(0, 60), "Mars/Olympus", datetime(2026, 1, 1, tzinfo=UTC))


async def test_caps_count_across_intents_in_a_sliding_window(redis: Redis, settings: Settings) -> None:
    caps = CapCounter(redis, Keys(settings.namespace))
    cap = Cap(max_alerts=2, window_s=600)
    t0 = datetime(2026, 1, 1, 20, 0, tzinfo=UTC)
    users = [("a", cap), ("b", Cap(max_alerts=1, window_s=600))]
    assert await caps.admit("g1", "i1", users, t0) == [True, True]
    assert await caps.admit("g1", "i2", users, t0 + timedelta(minutes=1)) == [True, False]
    assert await caps.admit("g1", "i2", users, t0 + timedelta(minutes=1)) == [True, False], "a redelivery counts once"
    assert await caps.admit("g1", "i3", users, t0 + timedelta(minutes=2)) == [False, False]
    assert await caps.admit("g2", "i4", users, t0 + timedelta(minutes=2)) == [True, True], "caps are per match"
    assert await caps.admit("g1", "i5", users, t0 + timedelta(minutes=10, seconds=1)) == [True, True]
    preview = await caps.admit("g1", "i6", users, t0 + timedelta(minutes=11, seconds=1), record=False)
    assert preview == [True, False]
    assert await caps.admit("g1", "i7", users, t0 + timedelta(minutes=11, seconds=2)) == [True, False]


async def test_the_bloom_filter_is_versioned_sized_and_never_hides_a_later_write(
    redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=4)
    bloom = PreferenceBloom(redis, keys, buckets=4, error_rate=0.001)
    assert (await bloom.snapshot()).maybe("anyone"), "no filter yet: everyone is a maybe"
    await store.set_preferences({f"m{i}": Preferences(muted_teams=frozenset({"t"})) for i in range(3000)})
    v1 = await bloom.rebuild()
    snap = await PreferenceBloom(redis, keys, buckets=4).snapshot()  # a fresh reader loads it from Redis
    assert snap.version == v1
    assert snap.bloom is not None
    assert snap.bloom.capacity >= 3000, "sized to its population"
    assert all(snap.maybe(f"m{i}") for i in range(3000))
    assert not snap.pending
    false_positives = sum(snap.maybe(f"x{i}") for i in range(10_000))
    assert false_positives < 100
    await store.mute_team("late", "t")
    snap = await PreferenceBloom(redis, keys, buckets=4).snapshot()
    assert snap.maybe("late"), "written after the build: a maybe through the pending set"
    v2 = await bloom.rebuild()
    snap = await PreferenceBloom(redis, keys, buckets=4).snapshot()
    assert (snap.version, snap.pending) == (v2, set())
    assert snap.maybe("late")
    assert 0 < await redis.ttl(keys.bloom_blob(v1)) <= 300, "the superseded version expires"


async def test_user_ids_with_whitespace_or_control_characters_are_refused(redis: Redis, settings: Settings) -> None:
    store = PreferenceStore(redis, Keys(settings.namespace))
    with pytest.raises(ConfigError, match="invalid user id 'a b'"):
        await store.follow_teams([("ok", "t1"), ("a b", "t1")])
    with pytest.raises(ConfigError, match="invalid user id"):
        await store.add_devices([phone("x\n")])
    assert await redis.scard(Keys(settings.namespace).team_followers("t1")) == 0, "nothing of the batch written"


async def test_the_expander_rebuilds_the_filter_once_enough_users_are_pending(redis: Redis, settings: Settings) -> None:
    from goalhorn.catalog import default_catalog
    from goalhorn.segmenter.expander import Expander
    from tests.test_consumer import intent

    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=4)
    bloom = PreferenceBloom(redis, keys, buckets=4)
    first = await bloom.rebuild()
    await store.set_preferences({f"m{i}": Preferences(muted_teams=frozenset({"t1"})) for i in range(5)})
    expander = Expander(redis, keys, default_catalog, buckets=4, bloom_rebuild_pending=5)
    assert [b async for b in expander.expand(intent(("scoring_team_followers",)))] == []
    assert expander.rebuilding is not None
    assert await expander.rebuilding
    snap = await bloom.snapshot()
    assert snap.version > first
    assert snap.pending == set()
    assert snap.maybe("m3")
    assert not await redis.exists(keys.bloom_rebuild_lock())


async def test_register_device_replaces_a_known_device_in_place_byte_for_byte(redis: Redis, settings: Settings) -> None:
    """The registration script finds a device by its id in the stored lines (no JSON parsing): ids
    that are prefixes of one another, an id spelled inside another device's address, and a device
    first, in the middle or last are each replaced in place, added_at kept, the record exactly what
    the Python encoder writes."""
    from goalhorn.preferences.model import encode_devices

    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=4)
    t0, t1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    decoy = '","device_id":"d1","user_id":"u",'  # escaped in the JSON line: never a match
    devices = [
        Device(platform="fcm", device_id="d1", user_id="u", address="a1"),
        Device(platform="webhook", device_id="d10", user_id="u", address=f"https://x/{decoy}", secret="whsec_1"),
        Device(platform="apns", device_id="d100", user_id="u", address="a100", locale="fr"),
    ]
    for device in devices:
        assert await store.register_device(device, max_devices=3, now=t0) is True
    stamped = [d.model_copy(update={"added_at": t0}) for d in devices]
    raw = await redis.hget(keys.device_bucket(bucket_of("u", 4)), "u")
    assert raw == encode_devices(stamped)
    for n, device in enumerate(devices):
        moved = device.model_copy(update={"address": f"moved{n}", "locale": "de"})
        assert await store.register_device(moved, max_devices=3, now=t1) is False
        stamped[n] = moved.model_copy(update={"added_at": t0})
        raw = await redis.hget(keys.device_bucket(bucket_of("u", 4)), "u")
        assert raw == encode_devices(stamped), f"replacing device {n}"
    assert await store.last_seen("u") == {"d1": t1, "d10": t1, "d100": t1}
    # an added_at given by the caller is written as given
    given = devices[1].model_copy(update={"added_at": t1})
    assert await store.register_device(given, max_devices=3, now=t1) is False
    assert {d.device_id: d.added_at for d in await store.devices_of("u")}["d10"] == t1


async def test_register_device_drops_a_duplicate_line_of_the_device(redis: Redis, settings: Settings) -> None:
    from goalhorn.preferences.model import encode_devices

    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=4)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    a, b = phone("u", 1), phone("u", 2)
    stored = [d.model_copy(update={"added_at": t0}) for d in (a, b, a, b, a)]
    await redis.hset(keys.device_bucket(bucket_of("u", 4)), "u", encode_devices(stored))
    assert await store.register_device(a.model_copy(update={"locale": "fr"}), max_devices=5) is False
    assert [(d.device_id, d.locale, d.added_at) for d in await store.devices_of("u")] == [
        ("u-1", "fr", t0),
        ("u-2", "en", t0),
        ("u-2", "en", t0),
    ]


async def test_a_rewrite_retries_on_its_own_users_fields_only(redis: Redis, settings: Settings) -> None:
    """A change of one user's preferences is checked against that user's field, not the whole bucket:
    another user of the same bucket written meanwhile costs no retry (a WATCH of the bucket retried,
    and under concurrent API writes retried in a loop); a change of the same user meanwhile is not
    lost (the change runs again on it)."""
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=1)  # every user in the one bucket
    other = sync_client(settings)
    runs = 0

    def mute_while_written(user: str) -> Callable[[Preferences], Preferences]:
        def change(prefs: Preferences) -> Preferences:
            nonlocal runs
            runs += 1
            if runs == 1:  # another writer, between this write's read and its compare-and-set
                other.hset(keys.preference_bucket(0), user, Preferences(muted_teams=frozenset({"che"})).encode())
            return prefs.with_changes(muted_teams=prefs.muted_teams | {"ars"})

        return change

    try:
        await store.change_preferences("alice", mute_while_written("bob"))
        assert runs == 1, "a write of another user in the bucket made it run again"
        assert (await store.preferences_of("alice")).muted_teams == {"ars"}
        assert (await store.preferences_of("bob")).muted_teams == {"che"}
        runs = 0
        await store.change_preferences("carol", mute_while_written("carol"))
        assert runs == 2
        assert (await store.preferences_of("carol")).muted_teams == {"ars", "che"}
    finally:
        other.close()


def sync_client(settings: Settings) -> Any:
    """A second, synchronous client of the same Redis (what another process would write with)."""
    if settings.redis_url is None:
        import fakeredis

        from goalhorn.redis_client import fake_server

        return fakeredis.FakeRedis(server=fake_server(settings.namespace))
    import redis as sync_redis

    return sync_redis.Redis.from_url(settings.redis_url)


async def test_every_kind_of_write_marks_its_user_for_topics(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=4)
    await store.changes.enable()
    writes = {
        "registered": store.register_device(phone("registered"), max_devices=5),
        "muted": store.mute_team("muted", "ars"),
        "set": store.set_preferences({"set": Preferences(cap=Cap(2))}),
        "followed": store.follow_teams([("followed", "ars")]),
    }
    for write in writes.values():
        await write
    assert set(await store.changes.pending()) >= set(writes)
    await store.changes.clear(await store.changes.pending())
    assert await store.remove_device("registered", "registered-0")
    assert await store.remove_user("muted")
    assert set(await store.changes.pending()) == {"registered", "muted"}
    assert await store.devices_of("registered") == []
    assert await store.last_seen("registered") == {}
    assert await store.preferences_of("muted") == DEFAULT_PREFERENCES
    assert not await store.remove_user("muted")
