"""Review of the broadcast channel lifecycle (issue 15): what it must not do to a game's channel.

- A channel is not deleted while the game's ``end`` intent may still be waiting to be sent: the end
  lives ``TTL_S["end"]`` (30 min) and a broadcast on a deleted channel is refused
  (``ChannelNotRegistered``), so every activity started on the channel would keep the game "live".
- Two fanout processes never both create a channel for one game (a pass that outlives its lease, or
  one that raced another): APNs would hold a channel goalhorn does not know, never deleted (Apple's
  10,000 are per app), and the broadcasts would go to one while phones subscribed to the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest

from goalhorn.app.fanout import live_games, live_registry
from goalhorn.dispatch.markers import DeliveryMarkers
from goalhorn.ingest.live import LiveState
from goalhorn.intents.live_pacing import LivePacing
from goalhorn.intents.liveactivity import HIGH, TTL_S, live_intent
from goalhorn.keys import Keys
from goalhorn.liveactivities.channels import ChannelLifecycle
from goalhorn.models import Device, GameState, GameStatus
from goalhorn.preferences.epoch import SubscriberEpoch
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers.apns_channels import ApnsChannels
from goalhorn.redis_client import Redis
from goalhorn.sandbox.apns_server import ApnsSandbox
from goalhorn.settings import Settings
from tests.support.apns_sandbox import apns_settings
from tests.support.builders import game_state

KICKOFF = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[ApnsSandbox]:
    async with ApnsSandbox(tmp_path) as server:
        yield server


def state(status: GameStatus, at: datetime) -> GameState:
    return game_state("busy", status, observed_at=at).model_copy(
        update={"home_team_id": "2", "away_team_id": "18", "start_time": KICKOFF}
    )


async def busy_game(redis: Redis, settings: Settings, status: GameStatus, at: datetime) -> LiveState:
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    await store.follow_teams([(f"acme/f-{i}", "2") for i in range(20)])
    live = LiveState(redis, Keys(settings.namespace), retention_s=3600)
    await live.write([state(status, at)])
    return live


class GatedChannels:
    """The real channel client (against the sandbox), whose ``create`` waits at a gate the test opens:
    it lets two passes interleave as two processes' passes do."""

    def __init__(self, inner: ApnsChannels) -> None:
        self.inner = inner
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def create(self, *, storage: Literal[0, 1] = 0) -> str:
        self.reached.set()
        await self.gate.wait()
        return await self.inner.create(storage=storage)

    async def delete(self, channel_id: str) -> bool:
        return await self.inner.delete(channel_id)

    async def list(self) -> list[str]:
        return await self.inner.list()

    async def aclose(self) -> None:
        await self.inner.aclose()


def lifecycle(redis: Redis, settings: Settings, client: ApnsChannels | GatedChannels) -> ChannelLifecycle:
    keys = Keys(settings.namespace)
    return ChannelLifecycle(
        redis,
        keys,
        live_registry(settings, redis),
        client,
        live_games(LiveState(redis, keys, retention_s=3600)),
        lead_s=1800,
        min_followers=10,
        keep_s=settings.live_channel_keep_s,  # the default, 600 s
        max_channels=10_000,
    )


async def test_the_channel_outlives_every_end_intent_that_may_still_be_sent(
    redis: Redis, settings: Settings, sandbox: ApnsSandbox
) -> None:
    live = await busy_game(redis, settings, GameStatus.LIVE, KICKOFF)
    channels = lifecycle(redis, settings, ApnsChannels(apns_settings(sandbox)))
    try:
        assert (await channels.run_once(KICKOFF.timestamp())).created == ["espn:busy"]
        made = await channels.registry.channel("espn:busy")
        assert made is not None
        full_time = KICKOFF + timedelta(hours=2)
        await live.write([state(GameStatus.FINAL, full_time)])
        # ingest publishes the end at full time; it may be sent until it expires, TTL_S["end"] later
        end_expires = full_time.timestamp() + TTL_S["end"]
        assert settings.live_channel_keep_s < TTL_S["end"], "the case under review: the default keep is shorter"
        assert (await channels.run_once(full_time.timestamp())).deleted == []
        report = await channels.run_once(end_expires - 1)
        assert report.deleted == [], "the channel was deleted while the end could still be waiting to go out"
        assert made.channel_id in sandbox.channels
        assert (await channels.run_once(end_expires + 1)).deleted == ["espn:busy"]
        assert made.channel_id not in sandbox.channels
    finally:
        await channels.aclose()


async def test_two_processes_racing_leave_one_channel_at_apns(
    redis: Redis, settings: Settings, sandbox: ApnsSandbox
) -> None:
    await busy_game(redis, settings, GameStatus.LIVE, KICKOFF)
    apns = apns_settings(sandbox)  # one key for both processes (a second one would replace the first's)
    gated = GatedChannels(ApnsChannels(apns))
    slow = lifecycle(redis, settings, gated)
    other = lifecycle(redis, settings, ApnsChannels(apns))
    try:
        first = asyncio.create_task(slow.run_once(KICKOFF.timestamp()))
        await asyncio.wait_for(gated.reached.wait(), 10)  # the slow pass is creating the game's channel
        await redis.delete(Keys(settings.namespace).la_channels_lease())  # its lease ran out meanwhile
        assert (await other.run_once(KICKOFF.timestamp() + 1)).created == ["espn:busy"]
        gated.gate.set()
        assert (await asyncio.wait_for(first, 10)).failed == []
        kept = await other.registry.channel("espn:busy")
        assert kept is not None
        assert list(sandbox.channels) == [kept.channel_id], "APNs holds a channel goalhorn does not know"
    finally:
        gated.gate.set()
        await slow.aclose()
        await other.aclose()


class SlowAnswer(GatedChannels):
    """The real client whose ``create`` has been executed by APNs, its answer not yet read when the gate
    is closed: a fanout stopping (``FanoutStage.stop`` cancels the lifecycle's task) lands right there."""

    async def create(self, *, storage: Literal[0, 1] = 0) -> str:
        channel_id = await self.inner.create(storage=storage)
        self.reached.set()
        await self.gate.wait()
        return channel_id


async def test_a_stop_during_a_creation_leaves_no_channel_goalhorn_does_not_know(
    redis: Redis, settings: Settings, sandbox: ApnsSandbox
) -> None:
    await busy_game(redis, settings, GameStatus.LIVE, KICKOFF)
    slow = SlowAnswer(ApnsChannels(apns_settings(sandbox)))
    channels = lifecycle(redis, settings, slow)
    try:
        running = asyncio.create_task(channels.run_once(KICKOFF.timestamp()))
        await asyncio.wait_for(slow.reached.wait(), 10)
        running.cancel()  # the fanout stops
        slow.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
        kept = await channels.registry.channel("espn:busy")
        assert list(sandbox.channels) == ([kept.channel_id] if kept else []), "APNs holds a channel goalhorn lost"
    finally:
        slow.gate.set()
        await channels.aclose()


async def test_once_the_end_went_out_on_the_channel_it_is_deleted_keep_s_after_full_time(
    redis: Redis, settings: Settings, sandbox: ApnsSandbox
) -> None:
    live = await busy_game(redis, settings, GameStatus.LIVE, KICKOFF)
    channels = lifecycle(redis, settings, ApnsChannels(apns_settings(sandbox)))
    keys = Keys(settings.namespace)
    pacing = LivePacing(redis, keys, high_per_hour=12, tick_s=60, retention_s=3600)
    try:
        assert (await channels.run_once(KICKOFF.timestamp())).created == ["espn:busy"]
        made = await channels.registry.channel("espn:busy")
        assert made is not None
        start = await pacing.claim(state(GameStatus.LIVE, KICKOFF), [], KICKOFF)  # ingest: the start
        assert start is not None
        assert await pacing.confirm(start)  # the broker confirmed it
        full_time = KICKOFF + timedelta(hours=2)
        final = state(GameStatus.FINAL, full_time)
        await live.write([final])
        claim = await pacing.claim(final, [], full_time)  # ingest: the end
        assert claim is not None
        assert claim.live_event == "end"
        end = live_intent(final, [], live_event="end", priority=HIGH, last_event="", now=full_time, dismiss_s=900)
        assert (await channels.run_once(full_time.timestamp())).deleted == []
        keep = settings.live_channel_keep_s
        assert (await channels.run_once(full_time.timestamp() + keep)).deleted == [], "the end has not gone out"
        markers = DeliveryMarkers(redis, keys, lease_s=60, sent_ttl_s=3600)
        device = Device(platform="apns", device_id="channel:espn:busy", user_id="channel:espn:busy", address="x")
        assert (await markers.claim(end, [device])).claimed == [device]  # a deliver worker sends the end
        assert (await channels.run_once(full_time.timestamp() + keep + 1)).deleted == ["espn:busy"]
        assert made.channel_id not in sandbox.channels
    finally:
        await channels.aclose()


async def test_after_redis_lost_its_data_no_channel_is_made_beside_the_one_apns_holds(
    redis: Redis, settings: Settings, sandbox: ApnsSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis restarted empty: the channels goalhorn held are gone from Redis, not from APNs. Until an
    operator says the subscribers are restored, passes make (and delete) nothing, logged once."""
    keys = Keys(settings.namespace)
    await busy_game(redis, settings, GameStatus.SCHEDULED, KICKOFF)
    channels = lifecycle(redis, settings, ApnsChannels(apns_settings(sandbox)))
    before = KICKOFF - timedelta(minutes=20)
    try:
        assert (await channels.run_once(before.timestamp())).created == ["espn:busy"]
        async for key in redis.scan_iter(match=keys.pattern()):  # Redis restarted empty
            await redis.delete(key)
        assert (await channels.run_once(before.timestamp() + 30)).subscribers_lost  # no epoch: nothing known
        await busy_game(redis, settings, GameStatus.SCHEDULED, KICKOFF)  # subscribers imported again, games polled
        replaced = await channels.run_once(before.timestamp() + 60)
        assert replaced.subscribers_lost
        assert replaced.created == []
        epoch = SubscriberEpoch(redis, keys)
        current = await epoch.read()
        assert current is not None
        assert await epoch.mark_lost(current, current)  # the fanout noticed too
        assert (await channels.run_once(before.timestamp() + 90)).created == []
        assert len(sandbox.channels) == 1, "a second channel beside the one APNs holds"
        lost_logs = [r for r in caplog.records if "broadcast channels: the subscriber epoch" in r.getMessage()]
        assert len(lost_logs) == 1  # once, not every pass
        await epoch.restore()  # goalhorn subscribers restored (the operator deals with APNs' old channel)
        assert (await channels.run_once(before.timestamp() + 120)).created == ["espn:busy"]
    finally:
        await channels.aclose()
