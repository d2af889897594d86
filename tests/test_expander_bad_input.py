"""Bad stored data never stops an expansion: an unreadable preferences record skips its user, a
device line without a known platform prefix is skipped, both counted, and every other eligible
device goes out exactly once; on both backends, with the Bloom filter built over the bad users, with
them only pending, and without the filter."""

from __future__ import annotations

from collections import Counter

import pytest

from goalhorn.catalog import default_catalog, parse_catalog
from goalhorn.dispatch.stage import salvage
from goalhorn.keys import Keys, Platform
from goalhorn.models import DeliveryBatch, Device, EncodedBatch
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.model import Preferences
from goalhorn.preferences.reader import bucket_of
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis
from goalhorn.segmenter.expander import Expander, ExpansionStats
from goalhorn.settings import Settings
from tests.test_consumer import intent
from tests.test_expander_properties import build_devices

BUCKETS = 4
PLATFORM_CYCLE: list[Platform] = ["fcm", "apns", "webhook"]

BAD_PREFERENCES = {
    "bp-json": b"not json",
    "bp-type": b'{"mt": 5}',
    "bp-list": b"[1, 2]",
    "bp-null": b"null",
    "bp-quiet": b'{"q": [60]}',
    "bp-cap": b'{"cap": [1]}',
    "bp-cap-type": b'{"cap": ["one", 600]}',
    "bp-zone": b'{"tz": "Mars/Olympus_Mons", "q": [0, 1439]}',
    "bp-truncated": b'{"mt": ["t2"',
}
GARBAGE_LINES = [b"garbage", b'{"device_id":"x","platform":"fcm","user_id":"u","address":"a"}', b"{}"]


def devices_of(user: str, n: int) -> list[Device]:
    return build_devices({user: [(PLATFORM_CYCLE[(len(user) + i) % 3], "en") for i in range(n)]})[user]


async def corrupt_preferences(redis: Redis, keys: Keys, records: dict[str, bytes]) -> None:
    for user, raw in records.items():
        await redis.hset(keys.preference_bucket(bucket_of(user, BUCKETS)), user, raw)


async def store_device_record(redis: Redis, keys: Keys, user: str, record: bytes) -> None:
    await redis.hset(keys.device_bucket(bucket_of(user, BUCKETS)), user, record)


async def expand(expander: Expander, segments: tuple[str, ...] = ("scoring_team_followers",)):
    stats = ExpansionStats()
    batches = [b async for b in expander.expand(intent(segments), stats)]
    return batches, stats


def delivered(batches: list[EncodedBatch]) -> Counter[str]:
    """Device ids of every batch, each batch decoded as the delivery worker will."""
    seen: Counter[str] = Counter()
    for batch in batches:
        decoded = batch.decode()
        assert isinstance(decoded, DeliveryBatch)
        assert decoded.platform == batch.platform
        seen.update(d.device_id for d in decoded.devices)
    return seen


@pytest.mark.parametrize("bloom", ["rebuilt", "pending", "off"])
async def test_bad_records_are_counted_and_skipped_and_everyone_else_gets_it_once(
    redis: Redis, settings: Settings, bloom: str
) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=BUCKETS)
    good = [f"g{i}" for i in range(30)]
    fine_prefs = {u: Preferences(time_zone="Asia/Tokyo") for u in good[:5]}  # maybes their records let through
    muted = "g5"
    bad_devices = ["bd-bulk", "bd-only-garbage", "bd-maybe"]
    everyone = [*good, *BAD_PREFERENCES, *bad_devices]
    by_user = {u: devices_of(u, 1 + len(u) % 3) for u in everyone}
    await store.add_devices([d for ds in by_user.values() for d in ds])
    await store.follow_teams([(u, "t1") for u in everyone])
    await store.watch_matches([(u, "g1") for u in everyone[::4]])  # not in the intent: no effect
    if bloom == "pending":
        await PreferenceBloom(redis, keys, buckets=BUCKETS).rebuild()  # nobody has preferences yet
    await store.set_preferences(
        {
            **fine_prefs,
            muted: Preferences(muted_teams=frozenset({"t1"})),
            "bd-maybe": Preferences(time_zone="Europe/Lisbon"),
            **{u: Preferences(time_zone="Europe/Berlin") for u in BAD_PREFERENCES},
        }
    )
    await corrupt_preferences(redis, keys, BAD_PREFERENCES)
    await store_device_record(redis, keys, "bd-bulk", by_user["bd-bulk"][0].to_json() + b"\n" + GARBAGE_LINES[0])
    await store_device_record(redis, keys, "bd-only-garbage", GARBAGE_LINES[1])
    await store_device_record(redis, keys, "bd-maybe", b"\n".join([GARBAGE_LINES[2], by_user["bd-maybe"][0].to_json()]))
    if bloom == "rebuilt":
        await PreferenceBloom(redis, keys, buckets=BUCKETS).rebuild()
    snapshot = await PreferenceBloom(redis, keys, buckets=BUCKETS).snapshot()
    maybes = {u for u in everyone if snapshot.maybe(u)}
    assert set(BAD_PREFERENCES) | {"bd-maybe"} <= maybes, "the bad records are read, not ruled out"
    if bloom != "off":
        assert "bd-bulk" not in maybes, "a user without preferences goes through the bulk path"

    expander = Expander(redis, keys, default_catalog, buckets=BUCKETS, batch_size=3, chunk=7, bloom=bloom != "off")
    batches, stats = await expand(expander)

    expected = Counter(d.device_id for u in good if u != muted for d in by_user[u])
    expected.update(["bd-bulk-0", "bd-maybe-0"])  # their good lines still go out
    assert delivered(batches) == expected, "every other eligible device exactly once"
    assert stats.invalid_preferences == len(BAD_PREFERENCES)
    assert stats.invalid_devices == 3
    assert stats.suppressed["muted"] == 1
    assert stats.devices == sum(expected.values())
    assert all(b.size <= 3 for b in batches)


async def test_bad_records_do_not_leak_between_segments(redis: Redis, settings: Settings) -> None:
    """A bad user reached through two segments is still skipped and the others get it once."""
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=BUCKETS)
    good = [f"g{i}" for i in range(12)]
    everyone = [*good, "bp-json", "bd-gone"]
    by_user = {u: devices_of(u, 2) for u in everyone}
    await store.add_devices([d for ds in by_user.values() for d in ds])
    await store.follow_teams([(u, "t1") for u in everyone])
    await store.watch_matches([(u, "g1") for u in [*good[::2], "bp-json", "bd-gone"]])
    await store.set_preferences({"bp-json": Preferences(time_zone="Europe/Berlin")})
    await corrupt_preferences(redis, keys, {"bp-json": b"not json"})
    await store_device_record(redis, keys, "bd-gone", GARBAGE_LINES[0])
    await PreferenceBloom(redis, keys, buckets=BUCKETS).rebuild()

    expander = Expander(redis, keys, default_catalog, buckets=BUCKETS, batch_size=4, chunk=5)
    batches, stats = await expand(expander, ("scoring_team_followers", "match_watchers"))

    assert delivered(batches) == Counter(d.device_id for u in good for d in by_user[u])
    assert stats.invalid_preferences >= 1
    assert stats.invalid_devices >= 1


def deliverable(batches: list[EncodedBatch]) -> Counter[str]:
    """Device ids the delivery worker will send: a batch as it is, or what ``salvage`` keeps of it."""
    seen: Counter[str] = Counter()
    for batch in batches:
        try:
            devices = batch.decode().devices
        except ValueError:
            salvaged, _ = salvage(batch.payload.decode(), batch.platform)
            devices = salvaged.devices if salvaged is not None else ()
        seen.update(d.device_id for d in devices)
    return seen


async def test_a_truncated_device_line_does_not_take_other_users_devices_with_it(
    redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=BUCKETS)
    phones = [Device(device_id=f"p{i}", user_id=f"p{i}", platform="fcm", address=f"tok{i}") for i in range(5)]
    await store.add_devices(phones)
    await store.follow_teams([(d.user_id, "t1") for d in phones] + [("broken", "t1")])
    await store_device_record(redis, keys, "broken", b'{"platform":"fcm","device_id":"b","user_id":"broken"')
    await PreferenceBloom(redis, keys, buckets=BUCKETS).rebuild()

    batches, _ = await expand(Expander(redis, keys, default_catalog, buckets=BUCKETS, batch_size=500))

    assert deliverable(batches) == Counter(d.device_id for d in phones)


LOCALE_CATALOG = parse_catalog(
    """
segments:
  english_fans:
    source: "team:{team_id}:followers"
    filters: {locale: [en]}
rules: {}
templates: {}
""",
    "locale.yaml",
)


async def test_a_bad_device_line_skips_only_that_line_when_devices_are_filtered(
    redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=BUCKETS)
    phone = Device(device_id="keep", user_id="u", platform="fcm", address="tok", locale="en")
    await store.follow_teams([("u", "t1")])
    await store_device_record(redis, keys, "u", phone.to_json() + b"\n" + GARBAGE_LINES[0])
    await PreferenceBloom(redis, keys, buckets=BUCKETS).rebuild()

    expander = Expander(redis, keys, lambda: LOCALE_CATALOG, buckets=BUCKETS)
    batches, stats = await expand(expander, ("english_fans",))

    assert stats.invalid_devices == 1
    assert delivered(batches) == Counter(["keep"])


async def test_a_string_where_a_list_belongs_is_an_invalid_preferences_record(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=BUCKETS)
    await store.add_devices([Device(device_id="d", user_id="u", platform="fcm", address="tok")])
    await store.follow_teams([("u", "t1")])
    await store.set_preferences({"u": Preferences(time_zone="Europe/Berlin")})
    await corrupt_preferences(redis, keys, {"u": b'{"mt": "t2"}'})

    batches, stats = await expand(Expander(redis, keys, default_catalog, buckets=BUCKETS))

    assert stats.invalid_preferences == 1
    assert delivered(batches) == Counter()
