"""GameDiffer: consecutive game states into typed events with ids that survive re-polls and restarts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from goalhorn.ingest.espn import parse_scoreboard
from goalhorn.ingest.events import GameDiffer, Incident
from goalhorn.models import EventKind, GameEvent, GameState, GameStatus, Sport

FIXTURES = Path(__file__).parent / "fixtures" / "espn"
T0 = datetime(2026, 5, 2, 23, 0, tzinfo=UTC)
LEAGUES = {
    Sport.SOCCER: "usa.1",
    Sport.HOCKEY: "nhl",
    Sport.BASKETBALL: "nba",
    Sport.FOOTBALL: "nfl",
    Sport.BASEBALL: "mlb",
}


class Game:
    """Successive states of one game, each a minute after the last."""

    def __init__(self, sport: Sport = Sport.SOCCER, game_id: str = "g1") -> None:
        self.minute = 0
        self.base: dict[str, Any] = {
            "game_id": game_id,
            "source": "espn",
            "sport": sport,
            "league": LEAGUES[sport],
            "status": GameStatus.LIVE,
            "status_detail": "STATUS_IN_PROGRESS",
            "home_team": "HOM",
            "away_team": "AWY",
            "home_team_id": "100",
            "away_team_id": "200",
            "home_score": 0,
            "away_score": 0,
            "period": 1,
        }

    def __call__(self, **changes: Any) -> GameState:
        self.base.update(changes)
        self.minute += 1
        return GameState(**self.base, observed_at=T0 + timedelta(minutes=self.minute))


def kinds(events: list[GameEvent]) -> list[str]:
    return [event.kind.value for event in events]


def test_the_first_state_of_a_game_says_nothing() -> None:
    game = Game()
    assert GameDiffer().update(game(home_score=2, away_score=1, period=2, status_detail="STATUS_HALFTIME")) == []


def test_each_goal_is_one_event_even_when_a_poll_shows_two() -> None:
    game, differ = Game(), GameDiffer()
    differ.update(game())

    events = differ.update(game(home_score=2, display_clock="31'"))

    assert kinds(events) == ["GOAL", "GOAL"]
    assert [(e.home_score, e.away_score) for e in events] == [(1, 0), (2, 0)]
    assert {(e.team_id, e.team) for e in events} == {("100", "HOM")}
    assert len({e.event_id for e in events}) == 2
    assert all(e.display_clock == "31'" and e.period == 1 for e in events)


def test_goals_by_both_teams_in_one_poll_are_ordered_by_their_details() -> None:
    game, differ = Game(Sport.SOCCER), GameDiffer()
    differ.update(game())
    incidents = [
        Incident("goal", "100", "p1", player="Late Scorer", clock_s=1500.0, display_clock="25'"),
        Incident("goal", "200", "p2", player="Early Scorer", clock_s=300.0, display_clock="5'"),
    ]

    events = differ.update(game(home_score=1, away_score=1), incidents)

    assert [(e.team, e.player, e.display_clock, e.home_score, e.away_score) for e in events] == [
        ("AWY", "Early Scorer", "5'", 0, 1),
        ("HOM", "Late Scorer", "25'", 1, 1),
    ]


def test_hockey_goals_and_an_own_goal_are_named() -> None:
    game, differ = Game(Sport.HOCKEY), GameDiffer()
    differ.update(game(home_score=1))
    incidents = [
        Incident("goal", "100", "a", player="First", clock_s=100.0),
        Incident("goal", "100", "b", player="Unlucky Defender", clock_s=900.0, own_goal=True),
    ]

    (event,) = differ.update(game(home_score=2), incidents)

    assert (event.kind, event.player, event.home_score) == (EventKind.GOAL, "Unlucky Defender (OG)", 2)


def test_a_goal_on_real_payloads_gets_its_scorer_from_the_details() -> None:
    after = json.loads((FIXTURES / "usa1_scoreboard.json").read_text(encoding="utf-8"))
    event = next(e for e in after["events"] if e["id"] == "623600")
    before = json.loads(json.dumps(after))
    earlier = next(e for e in before["events"] if e["id"] == "623600")
    earlier["competitions"][0]["competitors"][0]["score"] = "2"
    earlier["competitions"][0]["details"] = event["competitions"][0]["details"][:2]
    differ = GameDiffer()

    for moment, data in ((T0, before), (T0 + timedelta(seconds=30), after)):
        parsed = parse_scoreboard(json.dumps(data).encode(), observed_at=moment)
        events = [e for s in parsed.states for e in differ.update(s, parsed.incidents.get(s.game_id, ()))]

    (goal,) = events
    assert (goal.kind, goal.game_id, goal.team, goal.team_id) == (EventKind.GOAL, "623600", "ORL", "12011")
    assert (goal.player, goal.display_clock, goal.home_score, goal.away_score) == (
        "Lukas MacNaughton (OG)",
        "47'",
        3,
        0,
    )


@pytest.mark.parametrize(
    ("points", "kind"),
    [
        (6, EventKind.TOUCHDOWN),
        (7, EventKind.TOUCHDOWN),
        (8, EventKind.TOUCHDOWN),
        (3, EventKind.FIELD_GOAL),
        (2, EventKind.SAFETY),  # no possession in a scoreboard: a two-point try looks the same
        (1, EventKind.EXTRA_POINT),
        (10, EventKind.SCORE),
    ],
)
def test_football_scores_are_typed_by_the_points(points: int, kind: EventKind) -> None:
    game, differ = Game(Sport.FOOTBALL), GameDiffer()
    differ.update(game(away_score=3))

    (event,) = differ.update(game(away_score=3 + points))

    assert (event.kind, event.team_id, event.away_score) == (kind, "200", 3 + points)


def test_a_basket_is_one_event_per_team_per_poll() -> None:
    game, differ = Game(Sport.BASKETBALL), GameDiffer()
    differ.update(game(home_score=10, away_score=8))

    events = differ.update(game(home_score=13, away_score=10))

    assert kinds(events) == ["BASKET", "BASKET"]
    assert [(e.team, e.home_score, e.away_score) for e in events] == [("HOM", 13, 8), ("AWY", 13, 10)]


def test_baseball_runs_are_one_event_each() -> None:
    game, differ = Game(Sport.BASEBALL), GameDiffer()
    differ.update(game(period=5))

    events = differ.update(game(period=5, home_score=3))

    assert kinds(events) == ["RUN"] * 3


def test_an_implausible_burst_of_goals_is_one_score_not_a_flood_of_alerts() -> None:
    game, differ = Game(Sport.SOCCER), GameDiffer()
    differ.update(game(home_score=1))

    (event,) = differ.update(game(home_score=41))

    assert (event.kind, event.home_score) == (EventKind.SCORE, 41)


def test_a_score_that_goes_back_is_a_correction_not_a_goal() -> None:
    game, differ = Game(Sport.HOCKEY), GameDiffer()
    differ.update(game(home_score=1))
    (disallowed,) = differ.update(game(home_score=2))

    (correction,) = differ.update(game(home_score=1))
    (retaken,) = differ.update(game(home_score=2))

    assert (correction.kind, correction.team_id, correction.home_score) == (EventKind.SCORE_CORRECTION, "100", 1)
    assert retaken.kind is EventKind.GOAL
    assert retaken.event_id != disallowed.event_id


def test_a_goal_retaken_in_a_later_period_has_a_new_id_even_in_a_fresh_differ() -> None:
    game, differ = Game(Sport.HOCKEY), GameDiffer()
    differ.update(game(period=2))
    (disallowed,) = differ.update(game(period=2, away_score=1))
    differ.update(game(period=2, away_score=0))

    restarted = GameDiffer()
    restarted.update(game(period=3))
    (retaken,) = restarted.update(game(period=3, away_score=1))

    assert retaken.event_id != disallowed.event_id


def test_game_start_halftime_second_half_and_end() -> None:
    game, differ = Game(Sport.SOCCER), GameDiffer()
    differ.update(game(status=GameStatus.SCHEDULED, status_detail="STATUS_SCHEDULED", period=0))

    assert kinds(differ.update(game(status=GameStatus.LIVE, status_detail="STATUS_FIRST_HALF", period=1))) == [
        "GAME_START"
    ]
    (halftime,) = differ.update(game(status_detail="STATUS_HALFTIME", display_clock="HT"))
    assert (halftime.kind, halftime.period) == (EventKind.HALFTIME, 1)
    assert differ.update(game(status_detail="STATUS_HALFTIME")) == []
    assert differ.update(game(status_detail="STATUS_SECOND_HALF", period=2)) == []
    (end,) = differ.update(game(status=GameStatus.FINAL, status_detail="STATUS_FULL_TIME"))
    assert (end.kind, end.period) == (EventKind.GAME_END, 2)
    assert differ.update(game()) == []


def test_nhl_periods_end_once_and_overtime_is_period_four() -> None:
    game, differ = Game(Sport.HOCKEY), GameDiffer()
    differ.update(game(period=1))

    (first,) = differ.update(game(status_detail="STATUS_END_PERIOD"))
    assert (first.kind, first.period) == (EventKind.PERIOD_END, 1)
    assert differ.update(game(status_detail="STATUS_IN_PROGRESS", period=2)) == []
    (second,) = differ.update(game(period=3))
    assert (second.kind, second.period) == (EventKind.PERIOD_END, 2)
    (third,) = differ.update(game(period=4, home_score=0))
    assert third.period == 3
    events = differ.update(game(status=GameStatus.FINAL, status_detail="STATUS_FINAL", period=4, home_score=1))
    assert kinds(events) == ["GOAL", "GAME_END"]
    assert events[0].period == 4


def test_a_game_that_ends_goes_from_scheduled_to_final() -> None:
    game, differ = Game(Sport.BASKETBALL), GameDiffer()
    differ.update(game(status=GameStatus.SCHEDULED, period=0))

    events = differ.update(game(status=GameStatus.FINAL, period=4, home_score=101, away_score=99))

    assert "GAME_END" in kinds(events)
    assert "GAME_START" not in kinds(events)


def test_red_cards_are_reported_once_and_not_when_first_seen() -> None:
    game, differ = Game(Sport.SOCCER), GameDiffer()
    old = Incident("red_card", "200", "77", player="Sent Off Before")
    differ.update(game(), [old])
    new = Incident("red_card", "100", "88", player="Sent Off Now", display_clock="61'")

    (card,) = differ.update(game(), [old, new])

    assert (card.kind, card.team, card.team_id, card.player, card.display_clock) == (
        EventKind.RED_CARD,
        "HOM",
        "100",
        "Sent Off Now",
        "61'",
    )
    assert differ.update(game(), [old, new]) == []


def test_an_older_state_than_the_last_one_is_ignored() -> None:
    game, differ = Game(Sport.HOCKEY), GameDiffer()
    differ.update(game())
    stale = game(home_score=0)
    differ.update(game(home_score=1))

    assert differ.update(stale) == []
    assert differ.update(game(home_score=1)) == []


def test_games_are_kept_apart_and_can_be_forgotten() -> None:
    one, two, differ = Game(game_id="a"), Game(game_id="b"), GameDiffer()
    differ.update(one())
    differ.update(two())

    assert [e.game_id for e in differ.update(two(home_score=1))] == ["b"]
    differ.forget("espn", "b")
    assert differ.update(two(home_score=2)) == []


def _season() -> list[GameState]:
    game = Game(Sport.HOCKEY)
    return [
        game(status=GameStatus.SCHEDULED, period=0),
        game(status=GameStatus.LIVE, period=1),
        game(home_score=2),
        game(status_detail="STATUS_END_PERIOD"),
        game(status_detail="STATUS_IN_PROGRESS", period=2, away_score=1),
        game(away_score=0),
        game(period=3, away_score=1),
        game(period=4),
        game(status=GameStatus.FINAL, status_detail="STATUS_FINAL", home_score=3),
    ]


def test_ids_are_the_same_when_a_fresh_differ_replays_the_same_states() -> None:
    states = _season()
    first, second = GameDiffer(), GameDiffer()

    ids_first = [e.event_id for s in states for e in first.update(s)]
    ids_second = [e.event_id for s in states for e in second.update(s)]

    assert ids_first == ids_second
    assert len(ids_first) == len(set(ids_first)) == 11


def test_a_restart_that_sees_a_state_again_makes_no_new_id() -> None:
    states = _season()
    original = GameDiffer()
    by_transition = [[e.event_id for e in original.update(s)] for s in states]

    for n, state in enumerate(states):
        assert GameDiffer().update(state) == []
        if n == 0:
            continue
        restarted = GameDiffer()
        restarted.update(states[n - 1])
        again = [e.event_id for e in restarted.update(state)]
        if n == 6:
            # The one documented gap: a goal after a correction this differ never saw lacks ":r1".
            assert [f"{i}:r1" if ":GOAL:" in i else i for i in again] == by_transition[n]
        else:
            assert again == by_transition[n]


def test_the_events_of_one_snapshot_are_stamped_in_the_order_they_happened() -> None:
    """Two goals of one poll are no tie: the delivery orders alerts with one collapse key by event time
    (it supersedes the older for a device the newer was claimed for), so the 0-2 is strictly newer."""
    game, differ = Game(), GameDiffer()
    differ.update(game())
    state = game(home_score=2, display_clock="31'")

    events = differ.update(state)

    assert [(e.home_score, e.away_score) for e in events] == [(1, 0), (2, 0)]
    assert events[0].observed_at == state.observed_at
    assert events[0].observed_at < events[1].observed_at < state.observed_at + timedelta(milliseconds=1)
