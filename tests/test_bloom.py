"""The xxh3 Bloom filter: the vectorized probe agrees with ``in``, never a false negative, the
configured false-positive rate; a stored filter in another format or damaged is not used (everyone a
maybe), and the expander stays exact."""

from __future__ import annotations

import io
import logging

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pybloom_live import BloomFilter

from goalhorn.catalog import default_catalog
from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.preferences.bloom import FORMAT, PreferenceBloom, PreferenceFilter, Xxh3BloomFilter, load_filter
from goalhorn.preferences.model import Preferences
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis
from goalhorn.segmenter.expander import Expander, ExpansionStats
from goalhorn.settings import Settings
from tests.test_consumer import intent

keys_strategy = st.lists(st.binary(max_size=40), max_size=60)


@hsettings(max_examples=300, deadline=None)
@given(
    added=keys_strategy,
    probed=keys_strategy,
    slack=st.integers(0, 200),
    error_rate=st.sampled_from([0.5, 0.1, 0.01, 0.001]),
)
def test_contain_many_agrees_with_in_and_misses_nothing_added(
    added: list[bytes], probed: list[bytes], slack: int, error_rate: float
) -> None:
    bloom = Xxh3BloomFilter(capacity=len(added) + slack + 1, error_rate=error_rate)
    assert not bloom.contain_many(probed).any(), "an empty filter holds nothing"
    for key in added:
        bloom.add(key)
    keys = probed + added
    assert bloom.contain_many(keys).tolist() == [key in bloom for key in keys]
    assert bloom.contain_many(added).all(), "no false negatives"
    assert all(key in bloom for key in added)
    loaded = load_filter(serialized(bloom), 1)
    assert loaded is not None
    assert loaded.contain_many(keys).tolist() == bloom.contain_many(keys).tolist(), "the same after a round trip"


def test_contain_many_sees_keys_added_after_an_earlier_probe() -> None:
    bloom = Xxh3BloomFilter(capacity=100, error_rate=0.001)
    assert bloom.contain_many([b"late"]).tolist() == [False]
    bloom.add(b"late")
    assert bloom.contain_many([b"late"]).tolist() == [True]
    assert bloom.contain_many([]).shape == (0,)


@pytest.mark.parametrize("error_rate", [0.05, 0.01, 0.001])
def test_false_positive_rate_at_capacity_is_near_the_configured_one(error_rate: float) -> None:
    capacity = 20_000
    bloom = Xxh3BloomFilter(capacity=capacity, error_rate=error_rate)
    members = [f"user{i}".encode() for i in range(capacity)]
    for key in members:
        bloom.add(key, skip_check=True)
    assert bloom.contain_many(members).all()
    strangers = [f"user{i}".encode() for i in range(capacity, capacity + 200_000)]
    rate = float(bloom.contain_many(strangers).mean())
    assert 0.6 * error_rate < rate < 1.4 * error_rate, rate


def serialized(bloom: BloomFilter, tag: bytes = FORMAT) -> bytes:
    blob = io.BytesIO()
    blob.write(tag)
    bloom.tofile(blob)
    return blob.getvalue()


def plain_pybloom_blob(user_ids: list[str]) -> bytes:
    """A filter as pybloom-live writes it (salted SHA hashing, no format tag)."""
    bloom = BloomFilter(capacity=1024, error_rate=0.01)
    for user_id in user_ids:
        bloom.add(user_id)
    return serialized(bloom, tag=b"")


def test_load_filter_refuses_foreign_and_damaged_blobs(caplog: pytest.LogCaptureFixture) -> None:
    good = Xxh3BloomFilter(capacity=100, error_rate=0.01)
    good.add(b"a")
    blob = serialized(good)
    caplog.set_level(logging.WARNING, logger="goalhorn.preferences.bloom")
    for foreign in [
        plain_pybloom_blob(["a"]),
        b"",
        b"goalhorn-bloom/xxh3-dh/0\n" + blob[len(FORMAT) :],
        blob[:-3],  # truncated bits
        FORMAT + blob[len(FORMAT) : len(FORMAT) + 20],  # truncated header
        FORMAT + b"\x00",
    ]:
        caplog.clear()
        assert load_filter(foreign, 7) is None, foreign[:40]
        assert any(r.levelno == logging.WARNING and "v7" in r.getMessage() for r in caplog.records)
    loaded = load_filter(blob, 7)
    assert loaded is not None
    assert loaded.contain_many([b"a"]).tolist() == [True]


def test_a_filter_that_cannot_be_read_makes_everyone_a_maybe() -> None:
    snapshot = PreferenceFilter(3, None, {b"p"})
    assert snapshot.maybe_many([b"a", b"p", b"z"]).tolist() == [True, True, True]


def test_the_pending_set_is_ored_into_the_filter() -> None:
    bloom = Xxh3BloomFilter(capacity=1000, error_rate=0.001)
    bloom.add(b"in-filter")
    strangers = [f"s{i}".encode() for i in range(200)]
    found = bloom.contain_many(strangers)
    absent = [s for s, hit in zip(strangers, found, strict=True) if not hit][:2]
    snapshot = PreferenceFilter(1, bloom, {absent[0]})
    assert snapshot.maybe_many([b"in-filter", absent[0], absent[1]]).tolist() == [True, True, False]
    assert snapshot.maybe(absent[0].decode())
    assert not snapshot.maybe(absent[1].decode())


async def publish_blob(redis: Redis, keys: Keys, blob: bytes, version: int = 1) -> None:
    """Make ``blob`` the current filter and forget the pending users, as a rebuild would."""
    await redis.set(keys.bloom_blob(version), blob)
    await redis.set(keys.bloom_version(), version)
    await redis.delete(keys.bloom_pending())


async def test_a_filter_in_another_format_is_not_used_and_the_expander_stays_exact(
    redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=4)
    users = [f"u{i}" for i in range(60)]
    muted = users[::3]
    await store.add_devices([Device(device_id=f"{u}-d", user_id=u, platform="fcm", address=f"tok-{u}") for u in users])
    await store.follow_teams([(u, "t1") for u in users])
    await store.set_preferences({u: Preferences(muted_teams=frozenset({"t1"})) for u in muted})
    # pybloom-live's own hashing of the same users: read with xxh3 it would rule most of them out.
    await publish_blob(redis, keys, plain_pybloom_blob(muted))

    caplog.set_level(logging.WARNING, logger="goalhorn.preferences.bloom")
    snapshot = await PreferenceBloom(redis, keys, buckets=4).snapshot()
    assert (snapshot.version, snapshot.bloom, snapshot.pending) == (1, None, set())
    assert snapshot.maybe_many([u.encode() for u in users]).all()
    assert any("not in format" in r.getMessage() for r in caplog.records)

    expander = Expander(redis, keys, default_catalog, buckets=4, batch_size=7, chunk=16)
    stats = ExpansionStats()
    got = [
        d.device_id
        async for b in expander.expand(intent(("scoring_team_followers",)), stats)
        for d in b.decode().devices
    ]
    assert sorted(got) == sorted(f"{u}-d" for u in users if u not in muted)
    assert stats.suppressed["muted"] == len(muted)
    assert stats.preference_lookups == len(users), "everyone looked at one by one"


async def test_a_damaged_stored_filter_is_not_used(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=2)
    await store.set_preferences({f"m{i}": Preferences(muted_teams=frozenset({"t1"})) for i in range(50)})
    bloom = PreferenceBloom(redis, keys, buckets=2)
    version = await bloom.rebuild()
    blob = await redis.get(keys.bloom_blob(version))
    assert isinstance(blob, bytes)
    assert blob.startswith(FORMAT)
    await publish_blob(redis, keys, blob[:-10], version + 1)
    snapshot = await PreferenceBloom(redis, keys, buckets=2).snapshot()
    assert (snapshot.version, snapshot.bloom) == (version + 1, None)
    assert snapshot.maybe("anyone")


async def test_a_rebuilt_filter_is_read_back_in_its_format(redis: Redis, settings: Settings) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=2)
    custom = [f"m{i}" for i in range(300)]
    await store.set_preferences({u: Preferences(muted_teams=frozenset({"t1"})) for u in custom})
    version = await PreferenceBloom(redis, keys, buckets=2).rebuild()
    snapshot = await PreferenceBloom(redis, keys, buckets=2).snapshot()
    assert snapshot.version == version
    assert snapshot.bloom is not None
    assert snapshot.maybe_many([u.encode() for u in custom]).all()
    strangers = [f"x{i}".encode() for i in range(5000)]
    assert snapshot.maybe_many(strangers).mean() < 0.03
    assert snapshot.maybe_many(strangers).tolist() == [s in snapshot.bloom for s in strangers]
