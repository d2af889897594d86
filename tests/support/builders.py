"""Builders of the models tests feed the stages: one goal intent, one game state."""

from __future__ import annotations

from datetime import datetime, timedelta

from goalhorn.models import EventKind, GameState, GameStatus, Intent, Sport, utcnow


def make_intent(intent_id: str = "i-1", ttl_s: float = 300, template: str = "goal", **data: str) -> Intent:
    """A priority-9 goal intent for team t1 of game g1 that the packaged ``goal`` template renders;
    ``data`` adds or replaces template fields."""
    now = utcnow()
    return Intent(
        intent_id=intent_id,
        event_id=f"e-{intent_id}",
        kind=EventKind.GOAL,
        sport=Sport.SOCCER,
        game_id="g1",
        team_id="t1",
        priority=9,
        segments=("team:t1:followers",),
        template=template,
        data={
            "team": "NYC",
            "home_team": "NYC",
            "away_team": "NY",
            "home_score": "1",
            "away_score": "0",
            "clock": "12'",
            **data,
        },
        event_at=now,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )


def game_state(
    game_id: str, status: GameStatus, *, observed_at: datetime, sport: Sport = Sport.BASKETBALL, home: int = 0
) -> GameState:
    """BOS (2) at home to NYK (18), first period, ``home`` to 0."""
    return GameState(
        game_id=game_id,
        source="espn",
        sport=sport,
        league="nba" if sport is Sport.BASKETBALL else "nhl",
        status=status,
        home_team="BOS",
        away_team="NYK",
        home_team_id="2",
        away_team_id="18",
        home_score=home,
        away_score=0,
        period=1,
        observed_at=observed_at,
    )
