"""Per-team FCM topic membership against the FCM sandbox: who is subscribed, kept in sync as
preferences, devices and follows change, and how "in sync" is known."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.preferences.model import Cap, QuietHours
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.settings import Settings
from goalhorn.topics.fcm_admin import TopicAdmin
from goalhorn.topics.membership import TopicMembership
from tests.conftest import delete_namespace

TEAM = "ars"


def phone(user: str, n: int = 0, platform: str = "fcm", locale: str = "en") -> Device:
    address = f"{user}-tok{n}" if platform == "fcm" else f"{n:02d}" * 32
    return Device(platform=platform, device_id=f"{user}-d{n}", user_id=user, address=address, locale=locale)


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[FcmSandbox]:
    async with FcmSandbox() as sandbox:
        yield sandbox


@pytest.fixture
async def parts(
    redis: Redis, settings: Settings, fcm: FcmSandbox, tmp_path: Path
) -> AsyncIterator[tuple[PreferenceStore, TopicMembership]]:
    fcm_settings = settings.model_copy(
        update={"fcm_credentials_file": str(fcm.service_account(tmp_path / "sa.json")), "fcm_base_url": fcm.url}
    )
    admin = TopicAdmin(fcm_settings)
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys, buckets=settings.preference_buckets)
    membership = TopicMembership(redis, keys, admin, store, buckets=settings.preference_buckets, lease_wait_s=0.5)
    try:
        yield store, membership
    finally:
        await admin.aclose()


async def audience(store: PreferenceStore) -> None:
    """Ten followers: five plain (one with an iPhone too, one in French), five with preferences."""
    users = [f"u{n}" for n in range(10)]
    await store.follow_teams([(u, TEAM) for u in users] + [("u0", "che")])
    await store.add_devices([phone(u) for u in users] + [phone("u1", 1, "apns"), phone("u2", 1, locale="fr")])
    await store.mute_team("u5", TEAM)
    await store.opt_out("u6", "GOAL")
    await store.update_preferences("u7", quiet_hours=QuietHours(22 * 60, 7 * 60))
    await store.update_preferences("u8", cap=Cap(1))
    await store.mute_team("u9", "che")  # a mute of a team it does not follow: any mute is judged per token


def subscribed(fcm: FcmSandbox) -> dict[str, set[str]]:
    return {topic: set(tokens) for topic, tokens in fcm.topics.subscribers.items()}


async def test_sync_subscribes_exactly_the_fcm_devices_of_followers_without_preferences_per_locale(
    parts: tuple[PreferenceStore, TopicMembership], fcm: FcmSandbox
) -> None:
    store, membership = parts
    await audience(store)
    before = await membership.status_of(TEAM)
    assert not before.in_sync  # never reconciled

    report = await membership.sync_team(TEAM)

    assert report.in_sync
    en, fr = (membership.topic(TEAM, locale, report.generation) for locale in ("en", "fr"))
    assert subscribed(fcm) == {en: {f"u{n}-tok0" for n in range(5)}, fr: {"u2-tok1"}}
    status = await membership.status_of(TEAM)
    assert status.in_sync
    assert status.members == {en: 5, fr: 1}
    plan = await membership.plan(TEAM, "intent-1", int(time.time() * 1000) + 60_000)
    assert plan is not None
    assert plan.topics == {"en": (en, 5), "fr": (fr, 1)}

    again = await membership.sync_team(TEAM)  # nothing to do, nothing done
    assert (again.subscribed, again.unsubscribed, again.in_sync) == (0, 0, True)


async def test_a_time_zone_or_opt_ins_alone_exclude_nothing_and_keep_a_follower_in_the_topic(
    parts: tuple[PreferenceStore, TopicMembership], fcm: FcmSandbox
) -> None:
    """Nearly every app stores its users' time zones: that alone (no quiet hours) or opt-ins (they only
    add alerts) can keep no one from an alert that needs no opt-in. Quiet hours then take them out."""
    store, membership = parts
    await audience(store)
    await store.follow_teams([("tz", TEAM), ("optin", TEAM)])
    await store.add_devices([phone("tz"), phone("optin")])
    await store.update_preferences("tz", time_zone="Asia/Tokyo")
    await store.opt_in("optin", "GAME_END")

    report = await membership.sync_team(TEAM)

    en = membership.topic(TEAM, "en", report.generation)
    assert {"tz-tok0", "optin-tok0"} <= subscribed(fcm)[en]
    await store.update_preferences("tz", quiet_hours=QuietHours(22 * 60, 7 * 60))
    await membership.apply_changes()
    assert "tz-tok0" not in subscribed(fcm)[en]
    assert "optin-tok0" in subscribed(fcm)[en]


async def test_a_mute_makes_the_team_out_of_sync_until_the_user_is_unsubscribed(
    parts: tuple[PreferenceStore, TopicMembership], fcm: FcmSandbox
) -> None:
    store, membership = parts
    await audience(store)
    report = await membership.sync_team(TEAM)
    await membership.apply_changes()  # the writes of the audience itself
    en = membership.topic(TEAM, "en", report.generation)
    assert (await membership.status_of(TEAM)).in_sync

    await store.mute_team("u3", TEAM)

    status = await membership.status_of(TEAM)
    assert not status.in_sync
    assert status.marked_followers == 1
    assert await membership.plan(TEAM, "intent-2", int(time.time() * 1000) + 60_000) is None
    applied = await membership.apply_changes()
    assert applied.unsubscribed == 1
    assert "u3-tok0" not in fcm.topics.members(en)
    assert (await membership.status_of(TEAM)).in_sync

    await store.unmute_team("u3", TEAM)  # back on the defaults: subscribed again
    await store.unfollow_team("u4", TEAM)
    await membership.apply_changes()
    assert fcm.topics.members(en) == {"u0-tok0", "u1-tok0", "u2-tok0", "u3-tok0"}
    assert (await membership.status_of(TEAM)).in_sync


async def test_a_dead_token_is_pruned_and_a_new_device_subscribed(
    parts: tuple[PreferenceStore, TopicMembership], fcm: FcmSandbox
) -> None:
    store, membership = parts
    await audience(store)
    report = await membership.sync_team(TEAM)
    en = membership.topic(TEAM, "en", report.generation)
    fcm.unregistered.add("u0-tok7")
    await store.add_devices([phone("u0", 7), phone("u1", 8)])

    applied = await membership.apply_changes()
    assert applied.dead_tokens == 1
    assert [d.device_id for d in await store.devices_of("u0")] == ["u0-d0"]  # the dead one is gone
    await membership.apply_changes()  # the removal marked u0 again: nothing left to do for it
    assert "u1-tok8" in fcm.topics.members(en)
    assert (await membership.status_of(TEAM)).in_sync

    await store.remove_device("u1", "u1-d8")
    await membership.apply_changes()
    assert "u1-tok8" not in fcm.topics.members(en)


async def test_no_token_is_added_while_a_planned_topic_send_is_pending(
    parts: tuple[PreferenceStore, TopicMembership], fcm: FcmSandbox, redis: Redis, settings: Settings
) -> None:
    store, membership = parts
    await audience(store)
    report = await membership.sync_team(TEAM)
    await membership.apply_changes()
    en = membership.topic(TEAM, "en", report.generation)
    plan = await membership.plan(TEAM, "intent-3", int(time.time() * 1000) + 60_000)
    assert plan is not None

    await store.follow_teams([("late", TEAM)])
    await store.add_devices([phone("late")])
    applied = await membership.apply_changes()
    assert applied.deferred == 1
    assert "late-tok0" not in fcm.topics.members(en)  # it is sent per token: no second push from the topic
    assert not (await membership.status_of(TEAM)).in_sync

    keys = Keys(settings.namespace)
    await store.mute_team("u0", TEAM)  # a removal is not held back by the pending send
    applied = await membership.apply_changes()
    assert "u0-tok0" not in fcm.topics.members(en)
    assert "late-tok0" not in fcm.topics.members(en)

    # FCM accepted the planned topic messages (their delivery markers say so): the lease ends after
    # the grace, not only when the intent expires.
    for _, (topic, _) in plan.topics.items():
        await redis.set(keys.delivery_marker("intent-3", f"topic:{topic}"), b"sent")
    membership.state.sent_grace_s = 0.3
    assert (await membership.apply_changes()).deferred == 1  # within the grace
    await asyncio.sleep(0.4)
    await membership.apply_changes()
    assert "late-tok0" in fcm.topics.members(en)
    assert (await membership.status_of(TEAM)).in_sync
    assert not await redis.zcard(keys.topic_leases(TEAM))


async def test_lost_subscriber_data_means_out_of_sync_and_a_new_generation(
    parts: tuple[PreferenceStore, TopicMembership], redis: Redis, settings: Settings
) -> None:
    store, membership = parts
    await audience(store)
    first = await membership.sync_team(TEAM)
    keys = Keys(settings.namespace)
    await redis.delete(keys.subscriber_epoch())  # what Redis that restarted empty looks like, for the epoch
    assert not (await membership.status_of(TEAM)).synced
    await redis.delete(keys.topic_state(TEAM), keys.topic_members(TEAM))
    await store.epoch.ensure()
    second = await membership.sync_team(TEAM)
    assert second.in_sync
    assert second.generation != first.generation


async def test_the_topics_commands_against_the_sandbox_in_their_own_processes(tmp_path: Path) -> None:
    """``goalhorn topics sync`` and ``status`` as an operator runs them, on the real Redis, against
    ``goalhorn sandbox`` in another process."""
    import aiohttp

    from goalhorn.redis_client import make_redis
    from tests.processes import Process, exports, free_port, processes, real_env, run_command

    env = real_env()
    settings = Settings(redis_url=env["GOALHORN_REDIS_URL"], namespace=env["GOALHORN_NAMESPACE"])
    redis = make_redis(settings)
    try:
        await audience(PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets))
        with processes(tmp_path) as running:
            control = free_port()
            args = ["sandbox", "--dir", str(tmp_path / "sb"), "--fcm-port", "0", "--apns-port", "0"]
            args += ["--webhook-port", "0", "--control-port", str(control)]
            sandbox = running["sandbox"] = Process("sandbox", args, env, tmp_path).start()
            sandbox.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
            env.update(exports(sandbox.lines))

            before = run_command(["topics", "status", TEAM, "--json"], env)
            assert before.returncode == 0, before.stderr
            assert json.loads(before.stdout)[0]["in_sync"] is False

            synced = run_command(["topics", "sync", TEAM, "--json"], env)
            assert synced.returncode == 0, synced.stderr
            report = json.loads(synced.stdout.splitlines()[0])
            assert (report["what"], report["subscribed"], report["in_sync"]) == ("synced", 6, True)

            after = json.loads(run_command(["topics", "status", "--json"], env).stdout)
            assert [(s["team_id"], s["in_sync"], sum(s["members"].values())) for s in after] == [(TEAM, True, 6)]
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{control}/topics") as r:
                at_fcm = await r.json()
            assert sorted(at_fcm["subscribed"].values()) == [1, 5]
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
