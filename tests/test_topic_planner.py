"""The fan-out's topic planner, end to end against the FCM sandbox: an intent for a team in sync goes
out as one topic message per locale plus per-token batches for the rest, through the real FCM
provider; every eligible device gets exactly one push, an excluded one none; out of sync, everyone is
sent per token. Property tests (hypothesis) over random audiences, preferences and churn."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from goalhorn.catalog import parse_catalog
from goalhorn.keys import Keys
from goalhorn.models import DeliveryBatch, Device, EncodedBatch, Intent
from goalhorn.preferences.model import Cap, Preferences, QuietHours
from goalhorn.preferences.reader import bucket_of
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers.fcm import FcmProvider
from goalhorn.redis_client import Redis, make_redis
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.segmenter.expander import Expander, ExpansionStats, is_topic_batch
from goalhorn.settings import Settings
from goalhorn.topics.fcm_admin import TopicAdmin
from goalhorn.topics.membership import TopicMembership
from goalhorn.topics.state import TopicState
from tests.conftest import delete_namespace
from tests.support.builders import make_intent

TEAM = "t1"
CATALOG = parse_catalog(
    """
segments:
  fans: {source: "team:{team_id}:followers"}
  watchers: {source: "match:{game_id}:watching"}
  fans_in_spanish:
    source: "team:{team_id}:followers"
    filters: {locale: [es]}
rules: {}
templates: {}
""",
    "topics.yaml",
)


def intent(intent_id: str, *segments: str, **changes: object) -> Intent:
    return make_intent(intent_id).model_copy(update={"segments": segments or ("fans",), **changes})


def phone(user: str, n: int = 0, platform: str = "fcm", locale: str = "en") -> Device:
    address = f"{user}-tok{n}" if platform == "fcm" else f"{n:02x}" * 32
    return Device(platform=platform, device_id=f"{user}-d{n}", user_id=user, address=address, locale=locale)


@dataclass
class World:
    redis: Redis
    keys: Keys
    store: PreferenceStore
    membership: TopicMembership
    planner: Expander
    reference: Expander
    fcm: FcmSandbox
    settings: Settings


@pytest.fixture
async def world(redis: Redis, settings: Settings, tmp_path: Path) -> AsyncIterator[World]:
    async with FcmSandbox() as fcm:
        fcm_settings = settings.model_copy(
            update={"fcm_credentials_file": str(fcm.service_account(tmp_path / "sa.json")), "fcm_base_url": fcm.url}
        )
        yield await make_world(redis, fcm_settings, fcm)


async def make_world(redis: Redis, settings: Settings, fcm: FcmSandbox) -> World:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=3)
    admin = TopicAdmin(settings)
    membership = TopicMembership(redis, keys, admin, store, buckets=3, lease_wait_s=0.2)
    planner_view = TopicState(redis, keys)
    planner = Expander(redis, keys, lambda: CATALOG, chunk=7, batch_size=4, buckets=3, topics=planner_view)
    reference = Expander(redis, keys, lambda: CATALOG, chunk=7, batch_size=4, buckets=3)
    return World(redis, keys, store, membership, planner, reference, fcm, settings)


async def expand(expander: Expander, the_intent: Intent) -> tuple[list[EncodedBatch], ExpansionStats]:
    stats = ExpansionStats()
    return [batch async for batch in expander.expand(the_intent, stats)], stats


async def deliver(world: World, batches: list[EncodedBatch]) -> Counter[str]:
    """Send the FCM batches through the real provider; every push a phone shows, per FCM token."""
    world.fcm.received.clear()
    world.fcm.fanned_out.clear()
    async with FcmProvider(world.settings) as provider:
        for batch in batches:
            if batch.platform == "fcm":
                results = await provider.send(DeliveryBatch.from_json(batch.payload))
                assert {r.outcome for r in results} == {"sent"}
    await world.fcm.fanout.drain(10)
    per_token = Counter({t: n for t, n in world.fcm.received.items() if not t.startswith("goalhorn-")})
    return per_token + world.fcm.fanned_out


def fcm_tokens(batches: list[EncodedBatch]) -> list[str]:
    return [d.address for b in batches if b.platform == "fcm" for d in b.decode().devices]


async def audience(store: PreferenceStore) -> None:
    users = [f"u{n}" for n in range(12)]
    await store.follow_teams([(u, TEAM) for u in users])
    await store.watch_matches([("u0", "g1"), ("u6", "g1"), ("w", "g1")])
    await store.add_devices(
        [phone(u) for u in users]
        + [phone("u1", 1, "apns"), phone("u2", 1, locale="fr"), phone("u3", 1, locale="es"), phone("w")]
    )
    await store.mute_team("u6", TEAM)
    await store.opt_out("u7", "GOAL")
    await store.update_preferences("u8", cap=Cap(5))
    await store.mute_team("u9", "other")  # a record that may exclude (any mute does): judged per token


async def test_one_topic_message_per_locale_and_per_token_for_the_rest_each_device_once(world: World) -> None:
    await audience(world.store)
    await world.membership.sync_team(TEAM)
    await world.membership.apply_changes()
    reference_batches, _ = await expand(world.reference, intent("ref"))
    eligible = sorted(fcm_tokens(reference_batches))

    batches, stats = await expand(world.planner, intent("i-1"))

    topic_batches = [b for b in batches if is_topic_batch(b)]
    assert [b.decode().devices[0].locale for b in topic_batches] == ["en", "es", "fr"]
    assert (stats.topic_messages, stats.topic_members) == (3, 10)  # en: u0-u5, u10, u11; fr: u2; es: u3
    per_token = fcm_tokens([b for b in batches if not is_topic_batch(b)])
    assert sorted(per_token) == ["u8-tok0", "u9-tok0"]  # preferences that may exclude: judged, sent per token
    pushes = await deliver(world, batches)
    assert sorted(pushes.elements()) == eligible  # each eligible device exactly once, no one else
    assert "u6-tok0" not in pushes
    assert "u7-tok0" not in pushes
    assert world.fcm.requests == 2 + 3


async def test_out_of_sync_means_per_token_for_everyone(world: World) -> None:
    await audience(world.store)
    await world.membership.sync_team(TEAM)
    await world.membership.apply_changes()
    await world.store.mute_team("u1", TEAM)  # not applied yet: the team is out of sync

    batches, stats = await expand(world.planner, intent("i-2"))

    assert stats.topic_messages == 0
    assert not any(is_topic_batch(b) for b in batches)
    reference_batches, _ = await expand(world.reference, intent("ref-2"))
    assert sorted(fcm_tokens(batches)) == sorted(fcm_tokens(reference_batches))
    pushes = await deliver(world, batches)
    assert set(pushes.values()) == {1}
    assert "u1-tok0" not in pushes

    again, _ = await expand(world.planner, intent("i-2"))  # a redelivery keeps the first plan
    assert not any(is_topic_batch(b) for b in again)


async def test_an_unfollow_not_applied_yet_keeps_the_team_out_of_sync(world: World) -> None:
    """Found by the property test below: a user who unfollowed is no follower any more, but still
    subscribed to the team's topics until the change is applied; a topic send then reached them."""
    await audience(world.store)
    await world.membership.sync_team(TEAM)
    await world.membership.apply_changes()
    await world.store.unfollow_team("u1", TEAM)  # not applied yet: u1's phone is still in the topic

    assert not (await world.membership.status_of(TEAM)).in_sync
    batches, stats = await expand(world.planner, intent("i-3"))
    assert stats.topic_messages == 0
    assert "u1-tok0" not in fcm_tokens(batches)
    await world.membership.apply_changes()
    assert (await world.membership.status_of(TEAM)).in_sync


async def test_no_topic_for_a_segment_it_cannot_stand_for(world: World) -> None:
    await audience(world.store)
    await world.membership.sync_team(TEAM)
    await world.membership.apply_changes()
    for the_intent in (
        intent("opt-in", opt_in_required=True),
        intent("spanish", "fans_in_spanish"),
        intent("watchers-first", "watchers", "fans"),
        intent("correction", data={**make_intent().data, "corrects": "i-0"}),
    ):
        _, stats = await expand(world.planner, the_intent)
        assert stats.topic_messages == 0, the_intent.intent_id


async def test_a_correction_follows_an_alert_sent_through_topics(world: World) -> None:
    await audience(world.store)
    await world.membership.sync_team(TEAM)
    await world.membership.apply_changes()
    original, stats = await expand(world.planner, intent("goal-9"))
    assert stats.topic_messages == 3
    await deliver(world, original)
    through_topics = Counter(world.fcm.fanned_out)
    corrects = {**make_intent().data, "corrects": "goal-9"}
    correction, stats = await expand(world.planner, intent("undo-9", data=corrects))
    assert stats.topic_messages == 3  # the topic members got the goal through the topic: so its correction
    await deliver(world, correction)
    assert world.fcm.fanned_out == through_topics
    assert sum(through_topics.values()) == 10


async def test_later_segments_do_not_send_topic_members_twice(world: World) -> None:
    await audience(world.store)
    await world.membership.sync_team(TEAM)
    await world.membership.apply_changes()
    batches, stats = await expand(world.planner, intent("two", "fans", "watchers"))
    assert stats.topic_messages == 3
    reference, _ = await expand(world.reference, intent("two-ref", "fans", "watchers"))
    pushes = await deliver(world, batches)
    assert sorted(pushes.elements()) == sorted(fcm_tokens(reference))  # once each, watchers included
    assert "w-tok0" in pushes


# --- properties -------------------------------------------------------------------------------------
async def subscribed_everywhere(fcm: FcmSandbox) -> set[str]:
    return {token for tokens in fcm.topics.subscribers.values() for token in tokens}


async def plain_phones(world: World) -> set[str]:
    """FCM tokens of the team's followers whose preferences exclude nothing: no record, or one holding
    only a time zone and opt-ins."""
    members = await world.redis.smembers(world.keys.team_followers(TEAM))
    followers = sorted(u.decode() if isinstance(u, bytes) else u for u in members)
    out = set()
    for user in followers:
        record = await world.redis.hget(world.keys.preference_bucket(bucket_of(user, 3)), user)
        if record is None or set(json.loads(record)) <= {"tz", "in"}:
            out |= {d.address for d in await world.store.devices_of(user) if d.platform == "fcm"}
    return out


USERS = [f"p{n}" for n in range(10)]
preference_choices = st.sampled_from(
    [
        Preferences(muted_teams=frozenset({TEAM})),
        Preferences(opted_out=frozenset({"GOAL"})),
        Preferences(quiet_hours=QuietHours(0, 24 * 60 - 1)),
        Preferences(cap=Cap(0)),
        Preferences(time_zone="Asia/Tokyo"),
        Preferences(muted_teams=frozenset({"other"})),
    ]
)
population = st.fixed_dictionaries(
    {
        "follows": st.frozensets(st.sampled_from(USERS), min_size=3),
        "devices": st.dictionaries(
            st.sampled_from(USERS),
            st.lists(st.tuples(st.sampled_from(["fcm", "apns"]), st.sampled_from(["en", "de"])), max_size=3),
            min_size=3,
        ),
        "prefs": st.dictionaries(st.sampled_from(USERS), preference_choices, max_size=5),
    }
)
churn = st.lists(
    st.tuples(
        st.sampled_from(["mute", "unmute", "clear", "prefs", "new_device", "drop_device", "unfollow", "follow"]),
        st.sampled_from(USERS),
        preference_choices,
        st.booleans(),  # apply the changes after this one
    ),
    max_size=6,
)


@hsettings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(pop=population, changes=churn)
async def test_topic_members_plus_per_token_recipients_are_exactly_the_eligible_devices(
    backend: str, tmp_path: Path, pop: dict, changes: list
) -> None:
    base = Settings(namespace=f"p{uuid.uuid4().hex[:12]}")
    settings = base.with_real_services() if backend == "real" else base
    redis = make_redis(settings)
    try:
        async with FcmSandbox() as fcm:
            path = tmp_path / f"sa-{uuid.uuid4().hex[:6]}.json"
            world = await make_world(
                redis,
                settings.model_copy(
                    update={"fcm_credentials_file": str(fcm.service_account(path)), "fcm_base_url": fcm.url}
                ),
                fcm,
            )
            store = world.store
            await store.epoch.ensure()  # as any subscriber import does, even of no one
            await store.follow_teams([(u, TEAM) for u in pop["follows"]])
            await store.add_devices(
                [
                    phone(u, n, platform, locale)
                    for u, specs in pop["devices"].items()
                    for n, (platform, locale) in enumerate(specs)
                ]
            )
            await store.set_preferences(pop["prefs"])
            await world.membership.sync_team(TEAM)
            await world.membership.apply_changes()
            planned_topics = 0
            for n, (change, user, prefs, apply) in enumerate([("none", "", Preferences(), False), *changes]):
                if change == "mute":
                    await store.mute_team(user, TEAM)
                elif change == "unmute":
                    await store.unmute_team(user, TEAM)
                elif change == "clear":
                    await store.set_preferences({user: Preferences()})
                elif change == "prefs":
                    await store.set_preferences({user: prefs})
                elif change == "new_device":
                    await store.add_devices([phone(user, 10 + n)])
                elif change == "drop_device":
                    devices = await store.devices_of(user)
                    if devices:
                        await store.remove_device(user, devices[0].device_id)
                elif change == "unfollow":
                    await store.unfollow_team(user, TEAM)
                elif change == "follow":
                    await store.follow_teams([(user, TEAM)])
                if apply:
                    await world.membership.apply_changes()
                the_intent = intent(f"i{n}")
                reference, _ = await expand(world.reference, the_intent)
                planned, stats = await expand(world.planner, the_intent)
                topics = [b.decode().devices[0].address.removeprefix("/topics/") for b in planned if is_topic_batch(b)]
                via_topic = [t for topic in topics for t in fcm.topics.members(topic)]
                per_token = fcm_tokens([b for b in planned if not is_topic_batch(b)])
                assert len(via_topic) == len(set(via_topic)), "a device in two topics"
                assert not set(via_topic) & set(per_token), "never both to one device"
                assert sorted(via_topic + per_token) == sorted(fcm_tokens(reference))
                assert stats.topic_members == len(via_topic)
                planned_topics += stats.topic_messages
                if (await world.membership.status_of(TEAM)).in_sync:
                    assert await subscribed_everywhere(fcm) == await plain_phones(world), "in sync means exact"
            await world.membership.apply_changes()
            await world.redis.delete(world.keys.topic_leases(TEAM))
            await world.membership.apply_changes()
            assert (await world.membership.status_of(TEAM)).in_sync, "churn applied: back in sync"
            event(f"topic messages planned: {min(planned_topics, 3)}+")
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
