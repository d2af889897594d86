"""The canonical models hold their invariants and stay compact on the wire."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from goalhorn.catalog import default_catalog
from goalhorn.intents.rules import intents_for
from goalhorn.models import DeliveryBatch, DeliveryResult, Device, EventKind, GameEvent, Intent, Sport, utcnow


def goal_event() -> GameEvent:
    return GameEvent(
        event_id="espn:623600:GOAL:12011:2:p2",
        kind=EventKind.GOAL,
        source="espn",
        game_id="623600",
        sport=Sport.SOCCER,
        league="usa.1",
        team_id="12011",
        team="ORL",
        home_team="ORL",
        away_team="TOR",
        home_score=2,
        away_score=1,
        period=2,
        display_clock="67'",
        player="Facundo Torres",
        observed_at=utcnow(),
    )


def test_a_goal_intent_serializes_under_one_kib_and_round_trips() -> None:
    (intent,) = intents_for(goal_event(), default_catalog().rules, utcnow())
    wire = intent.to_json()
    assert len(wire) < 1024
    assert Intent.from_json(wire) == intent
    assert intent.priority == 9
    assert intent.segments == ("scoring_team_followers", "match_watchers")


def test_models_are_frozen() -> None:
    (intent,) = intents_for(goal_event(), default_catalog().rules, utcnow())
    with pytest.raises(ValidationError):
        intent.priority = 1  # type: ignore[misc]


def test_intent_rejects_priority_out_of_range_and_expiry_before_creation() -> None:
    (intent,) = intents_for(goal_event(), default_catalog().rules, utcnow())
    data = intent.model_dump()
    with pytest.raises(ValidationError, match="priority"):
        Intent.model_validate({**data, "priority": 10})
    with pytest.raises(ValidationError, match="expires_at"):
        Intent.model_validate({**data, "expires_at": data["created_at"] - timedelta(seconds=1)})


def test_batch_holds_at_most_500_devices_of_one_platform() -> None:
    (intent,) = intents_for(goal_event(), default_catalog().rules, utcnow())
    phones = [Device(device_id=f"d{i}", user_id=f"u{i}", platform="fcm", address=f"t{i}") for i in range(501)]
    DeliveryBatch(batch_id="b", platform="fcm", intent=intent, devices=tuple(phones[:500]))
    with pytest.raises(ValidationError, match="500"):
        DeliveryBatch(batch_id="b", platform="fcm", intent=intent, devices=tuple(phones))
    ios = Device(device_id="i1", user_id="u1", platform="apns", address="ab" * 32)
    with pytest.raises(ValidationError, match="not fcm devices"):
        DeliveryBatch(batch_id="b", platform="fcm", intent=intent, devices=(phones[0], ios))


def test_only_failures_retry_and_webhooks_need_a_secret() -> None:
    with pytest.raises(ValidationError, match="retryable"):
        DeliveryResult(device_id="d", outcome="sent", retryable=True)
    assert DeliveryResult(device_id="d", outcome="failed", retryable=True, reason="http_503").retryable
    with pytest.raises(ValidationError, match="secret"):
        Device(device_id="w", user_id="u", platform="webhook", address="https://bot.example/hook")
