"""Corrections follow the goal: a SCORE_CORRECTION reaches exactly the devices the goal reached, under
the goal's collapse key, and nobody who never got the goal, end to end on both backends."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from goalhorn.app.pipeline import Pipeline
from goalhorn.catalog import parse_catalog
from goalhorn.catalog.located import CatalogInvalid
from goalhorn.catalog.templates import Renderer
from goalhorn.keys import Keys, Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device, EventKind, GameEvent, Sport
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers import Provider
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings
from tests.conftest import delete_namespace
from tests.queues import delete_delivery_queues

pytestmark = pytest.mark.timeout(90)
AT = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)


class RecordingProvider(Provider):
    """Accepts every push and records (device, intent kind, collapse key, title)."""

    def __init__(self, platform: Platform, render: Renderer, log: list[tuple[str, str, str | None, str]]) -> None:
        self.platform = platform
        self._render = render
        self._log = log

    async def send(self, batch: DeliveryBatch) -> list[DeliveryResult]:
        intent = batch.intent
        for device in batch.devices:
            title = self._render(intent, device.locale).title
            self._log.append((device.device_id, intent.kind.value, intent.collapse_key, title))
        return [DeliveryResult(device_id=d.device_id, outcome="sent") for d in batch.devices]


def hockey(kind: EventKind, event_id: str, home: int, before: int) -> GameEvent:
    return GameEvent(
        event_id=event_id,
        kind=kind,
        source="sportradar",
        game_id="g1",
        sport=Sport.HOCKEY,
        league="nhl",
        team_id="t1",
        team="EDM",
        home_team="EDM",
        away_team="PIT",
        home_score=home,
        away_score=0,
        home_score_before=before,
        away_score_before=0,
        period=1,
        clock_s=600.0,
        display_clock="10:00",
        observed_at=AT,
    )


def phone(user: str, n: int = 1, platform: Platform = "fcm") -> Device:
    return Device(device_id=f"{user}-{n}", user_id=user, platform=platform, address=f"tok-{user}-{n}")


async def test_a_correction_reaches_exactly_the_devices_the_goal_reached(settings: Settings) -> None:
    redis = make_redis(settings)
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    await store.add_devices([phone("a"), phone("b", platform="apns"), phone("m"), phone("w")])
    await store.follow_teams([("a", "t1"), ("b", "t1"), ("m", "t1")])
    await store.mute_team("m", "t1")
    await store.watch_matches([("w", "g1")])
    log: list[tuple[str, str, str | None, str]] = []
    try:
        async with Pipeline(settings, lambda platform, render: RecordingProvider(platform, render, log)) as pipeline:
            await pipeline.publish_events([hockey(EventKind.GOAL, "sportradar:g1:GOAL:e1", 1, 0)])
            await pipeline.wait_idle(timeout_s=30)
            goal = sorted((device, key) for device, kind, key, _ in log if kind == "GOAL")
            assert goal == [("a-1", "goal:g1"), ("b-1", "goal:g1"), ("w-1", "goal:g1")]
            # After the goal: a second phone for a, a new follower; m unmutes. None of them got the goal.
            await store.add_devices([phone("a", 2), phone("late")])
            await store.follow_teams([("late", "t1")])
            await store.unmute_team("m", "t1")
            disallowed = hockey(EventKind.SCORE_CORRECTION, "sportradar:g1:SCORE_CORRECTION:e1", 0, 1)
            await pipeline.publish_events([disallowed])
            await pipeline.wait_idle(timeout_s=30)
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
        if settings.amqp_url:
            await delete_delivery_queues(settings)

    corrections = sorted((device, key, title) for device, kind, key, title in log if kind == "SCORE_CORRECTION")
    assert corrections == [
        ("a-1", "goal:g1", "Score corrected: EDM"),
        ("b-1", "goal:g1", "Score corrected: EDM"),
        ("w-1", "goal:g1", "Score corrected: EDM"),
    ], "the goal's recipients, under its collapse key, and nobody else"


async def test_a_correction_with_no_alert_to_take_back_sends_nothing(settings: Settings) -> None:
    redis = make_redis(settings)
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    await store.add_devices([phone("a")])
    await store.follow_teams([("a", "t1")])
    log: list[tuple[str, str, str | None, str]] = []
    try:
        async with Pipeline(settings, lambda platform, render: RecordingProvider(platform, render, log)) as pipeline:
            published = await pipeline.publish_events(
                [hockey(EventKind.SCORE_CORRECTION, "sportradar:g1:SCORE_CORRECTION:x", 0, 1)]
            )
            assert len(published) == 1
            snap = await pipeline.wait_idle(timeout_s=30)
            assert snap.get("intents") == 0
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
        if settings.amqp_url:
            await delete_delivery_queues(settings)
    assert log == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("kinds: [GOAL]\n    to_original_recipients: true", "takes kinds: [SCORE_CORRECTION]"),
        ("kinds: [SCORE_CORRECTION]\n    to_original_recipients: true\n    segments: [s]", "no segments of its own"),
        ("kinds: [SCORE_CORRECTION]\n    to_original_recipients: 1", "must be true or false"),
    ],
)
def test_a_follow_the_original_rule_is_checked(body: str, problem: str) -> None:
    text = f"""\
segments:
  s: {{source: "team:{{team_id}}:followers"}}
rules:
  fix:
    {body}
    priority: 9
    template: t
templates:
  t:
    en: {{title: "{{team}}", body: "{{home_score}}"}}
"""
    with pytest.raises(CatalogInvalid, match=re.escape(problem)):
        parse_catalog(text, "r.yaml")
