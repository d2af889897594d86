"""The broadcast channel lifecycle against the APNs sandbox (HTTP/2 + TLS channel management):
a busy game gets its channel before kickoff, keeps it through full time plus the grace, and loses it
after; a quiet one never gets one; past the limit games go per-token; one process acts at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from goalhorn.app.fanout import live_games, live_registry
from goalhorn.ingest.live import LiveState
from goalhorn.keys import Keys
from goalhorn.liveactivities.channels import END_TTL_S, ChannelLifecycle
from goalhorn.models import GameState, GameStatus
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers.apns_channels import ApnsChannels
from goalhorn.redis_client import Redis
from goalhorn.sandbox.apns_server import CHANNEL_LIMIT, ApnsSandbox
from goalhorn.sandbox.apns_server import Channel as SandboxChannel
from goalhorn.settings import Settings
from tests.support.apns_sandbox import apns_settings
from tests.support.builders import game_state

KICKOFF = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
LEAD_S, KEEP_S = 1800, 600


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[ApnsSandbox]:
    async with ApnsSandbox(tmp_path) as server:
        yield server


def state(game_id: str, status: GameStatus, *, home: str = "2", away: str = "18", at: datetime) -> GameState:
    return game_state(game_id, status, observed_at=at).model_copy(
        update={"home_team_id": home, "away_team_id": away, "start_time": KICKOFF}
    )


async def followers(redis: Redis, settings: Settings, team: str, n: int) -> None:
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    await store.follow_teams([(f"acme/{team}-{i}", team) for i in range(n)])


def lifecycle(
    redis: Redis, settings: Settings, sandbox: ApnsSandbox, *, max_channels: int = 10_000
) -> ChannelLifecycle:
    keys = Keys(settings.namespace)
    return ChannelLifecycle(
        redis,
        keys,
        live_registry(settings, redis),
        ApnsChannels(apns_settings(sandbox)),
        live_games(LiveState(redis, keys, retention_s=3600)),
        lead_s=LEAD_S,
        min_followers=10,
        keep_s=KEEP_S,
        max_channels=max_channels,
    )


def at(moment: datetime) -> float:
    return moment.timestamp()


async def test_a_busy_game_has_a_channel_from_before_kickoff_until_after_full_time(
    redis: Redis, settings: Settings, sandbox: ApnsSandbox
) -> None:
    live = LiveState(redis, Keys(settings.namespace), retention_s=3600)
    await followers(redis, settings, "2", 6)
    await followers(redis, settings, "18", 6)  # 12 together: a channel
    await followers(redis, settings, "5", 3)  # 3: per-token is enough
    early = KICKOFF - timedelta(hours=2)
    await live.write(
        [
            state("busy", GameStatus.SCHEDULED, at=early),
            state("quiet", GameStatus.SCHEDULED, home="5", away="6", at=early),
        ]
    )
    channels = lifecycle(redis, settings, sandbox)
    registry = channels.registry
    try:
        assert (await channels.run_once(at(KICKOFF - timedelta(minutes=31)))).created == []  # not yet
        report = await channels.run_once(at(KICKOFF - timedelta(minutes=29)))
        assert report.created == ["espn:busy"]
        made = await registry.channel("espn:busy")
        assert made is not None
        assert made.storage == 0
        assert sandbox.channels[made.channel_id].storage == 0  # No Message Storage, at APNs too
        assert await registry.channel("espn:quiet") is None
        assert (await channels.run_once(at(KICKOFF))).created == []  # one per game
        await live.write([state("busy", GameStatus.LIVE, at=KICKOFF)])
        await channels.run_once(at(KICKOFF + timedelta(minutes=50)))
        await live.write([state("busy", GameStatus.FINAL, at=KICKOFF + timedelta(hours=2))])
        final = at(KICKOFF + timedelta(hours=2))
        assert (await channels.run_once(final)).deleted == []  # the end update has not gone out yet
        kept_s = max(KEEP_S, END_TTL_S)  # never before the end intent may have expired
        assert (await channels.run_once(final + kept_s - 1)).deleted == []
        assert (await channels.run_once(final + kept_s)).deleted == ["espn:busy"]
        assert await registry.channel("espn:busy") is None
        assert made.channel_id not in sandbox.channels
    finally:
        await channels.aclose()


async def test_past_the_limit_games_go_per_token(redis: Redis, settings: Settings, sandbox: ApnsSandbox) -> None:
    live = LiveState(redis, Keys(settings.namespace), retention_s=3600)
    for team, n in (("a", 30), ("b", 20), ("c", 10)):
        await followers(redis, settings, team, n)
    early = KICKOFF - timedelta(minutes=10)
    await live.write([state(f"g{team}", GameStatus.SCHEDULED, home=team, away="zz", at=early) for team in "abc"])
    capped = lifecycle(redis, settings, sandbox, max_channels=1)  # goalhorn's own cap
    try:
        report = await capped.run_once(at(early))
        assert report.created == ["espn:ga"]  # the busiest first
        assert sorted(report.over_limit) == ["espn:gb", "espn:gc"]
    finally:
        await capped.release()
        await capped.aclose()
    for n in range(CHANNEL_LIMIT - 2):  # APNs holds the app's other channels: room for one more
        sandbox.channels[f"ZmlsbGVy{n:08d}"] = SandboxChannel(0, set())
    apple = lifecycle(redis, settings, sandbox)
    try:
        report = await apple.run_once(at(early) + 1)
        assert report.created == ["espn:gb"]
        assert report.over_limit == ["espn:gc"]
        assert await apple.registry.channel_count() == 2
    finally:
        await apple.aclose()


async def test_one_process_acts_at_a_time(redis: Redis, settings: Settings, sandbox: ApnsSandbox) -> None:
    first, second = lifecycle(redis, settings, sandbox), lifecycle(redis, settings, sandbox)
    try:
        assert not (await first.run_once()).held_by_other
        assert (await second.run_once()).held_by_other
        await first.release()
        assert not (await second.run_once()).held_by_other
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_channel_apns_lost_is_forgotten(redis: Redis, settings: Settings, sandbox: ApnsSandbox) -> None:
    live = LiveState(redis, Keys(settings.namespace), retention_s=3600)
    await followers(redis, settings, "2", 20)
    await live.write([state("busy", GameStatus.LIVE, at=KICKOFF)])
    channels = lifecycle(redis, settings, sandbox)
    try:
        assert (await channels.run_once(at(KICKOFF))).created == ["espn:busy"]
        made = await channels.registry.channel("espn:busy")
        assert made is not None
        del sandbox.channels[made.channel_id]  # gone at APNs (an operator, a reset)
        fresh = lifecycle(redis, settings, sandbox)  # a new process reconciles on its first pass
        await channels.release()
        try:
            report = await fresh.run_once(at(KICKOFF) + 60)
            assert report.forgotten == ["espn:busy"]
            assert report.created == ["espn:busy"]  # a live busy game gets a new one
        finally:
            await fresh.aclose()
    finally:
        await channels.aclose()
