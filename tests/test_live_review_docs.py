"""Review of docs/live-activities.md (issue 15): an app developer builds the app's ``ContentState``,
``GameActivityAttributes`` and Android parser from it, so every field a Live Activity push carries is
named there (ActivityKit silently drops a push its types cannot decode)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from goalhorn.intents.liveactivity import HIGH, LiveEvent, live_intent
from goalhorn.models import EventKind, GameEvent, GameState, GameStatus, Sport

DOC = Path(__file__).resolve().parents[1] / "docs" / "live-activities.md"
T0 = datetime(2026, 5, 2, 19, 30, tzinfo=UTC)


def state(status: GameStatus) -> GameState:
    return GameState(
        game_id="401",
        source="espn",
        sport=Sport.SOCCER,
        league="eng.1",
        status=status,
        status_detail="STATUS_FIRST_HALF",
        home_team="ARS",
        away_team="CHE",
        home_team_id="359",
        away_team_id="363",
        home_score=1,
        away_score=0,
        period=1,
        display_clock="12'",
        observed_at=T0,
    )


def goal(of: GameState) -> GameEvent:
    return GameEvent(
        event_id="espn:401:GOAL:1",
        kind=EventKind.GOAL,
        source="espn",
        game_id="401",
        sport=Sport.SOCCER,
        league="eng.1",
        team_id="359",
        team="ARS",
        home_team="ARS",
        away_team="CHE",
        home_score=1,
        away_score=0,
        period=1,
        display_clock="12'",
        player="Saka",
        observed_at=of.observed_at,
    )


@pytest.mark.parametrize("live_event", ["start", "update", "end"])
def test_every_field_of_a_live_activity_push_is_documented(live_event: LiveEvent) -> None:
    shown = state(GameStatus.FINAL if live_event == "end" else GameStatus.LIVE)
    intent = live_intent(
        shown,
        [goal(shown)],
        live_event=live_event,
        priority=HIGH,
        last_event="GOAL Saka 12'",
        now=T0 + timedelta(seconds=1),
        dismiss_s=900,
    )
    aps = json.loads(intent.data["liveactivity"])
    names = {*aps, *aps["content-state"], *aps.get("attributes", {}), *aps.get("alert", {})}
    names |= {*json.loads(intent.data["live_update"]), "intent_id", "event_id", "input-push-channel"}
    text = DOC.read_text()
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert missing == [], f"docs/live-activities.md does not name {missing}"
