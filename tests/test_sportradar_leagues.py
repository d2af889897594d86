"""Sportradar's MLB, NFL and NHL push streams (fixtures built from the documented formats) through the
adapter: the right kind, team and score for every scoring play, resends and late events dropped."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from goalhorn.ingest.scoring import football_kind
from goalhorn.ingest.sportradar import SportradarAdapter
from goalhorn.models import EventKind, GameStatus
from tests.feeds import fixture

AT = datetime(2025, 7, 4, 23, 30, tzinfo=UTC)

EXPECTED = {
    "mlb": [
        (EventKind.RUN, "NYY", 1, 0, 1, "▼1", "Aaron Judge"),
        (EventKind.RUN, "BOS", 1, 2, 3, "▲3", "Jarren Duran"),
        (EventKind.RUN, "NYY", 2, 2, 5, "▼5", None),
        (EventKind.RUN, "NYY", 3, 2, 9, "▼9", "Giancarlo Stanton"),
        (EventKind.GAME_END, None, 3, 2, 9, "▼9", None),  # the first message of the closed game
    ],
    "nfl": [
        (EventKind.TOUCHDOWN, "KC", 6, 0, 1, "10:02", "Patrick Mahomes"),
        (EventKind.EXTRA_POINT, "KC", 7, 0, 1, "10:02", None),
        (EventKind.FIELD_GOAL, "BUF", 7, 3, 2, "6:44", None),
        (EventKind.HALFTIME, None, 7, 3, 2, "0:00", None),
        (EventKind.TOUCHDOWN, "BUF", 7, 9, 3, "9:12", "Josh Allen"),
        (EventKind.TWO_POINT_CONVERSION, "BUF", 7, 11, 3, "9:12", None),
        (EventKind.SAFETY, "KC", 9, 11, 4, "3:20", None),
        (EventKind.GAME_END, None, 9, 11, 4, "0:00", None),
    ],
    "nhl": [
        (EventKind.GOAL, "EDM", 1, 0, 1, "12:14", "Connor McDavid"),
        (EventKind.PERIOD_END, None, 1, 0, 1, "0:00", None),
        (EventKind.PERIOD_END, None, 2, 2, 4, "OT 0:00", None),
        (EventKind.GOAL, "PIT", 1, 1, 3, "4:51", "Sidney Crosby"),
        (EventKind.GAME_END, None, 3, 2, 5, "SO", None),  # the shootout attempt itself is no goal
        (EventKind.GOAL, "EDM", 2, 1, 4, "OT 2:37", "Leon Draisaitl"),
        (EventKind.GAME_END, None, 2, 1, 4, "OT 2:37", None),
    ],
}


def run(adapter: SportradarAdapter, stream: bytes, size: int):
    events, states, rejected = [], [], []
    for i in range(0, len(stream), size):
        parsed = adapter.feed(stream[i : i + size], received_at=AT)
        events += parsed.events
        states += parsed.states
        rejected += parsed.rejected
    rejected += adapter.close().rejected
    return events, states, rejected


def seen(events):
    return [(e.kind, e.team, e.home_score, e.away_score, e.period, e.display_clock, e.player) for e in events]


@pytest.mark.parametrize("league", ["mlb", "nfl", "nhl"])
@pytest.mark.parametrize("size", [1, 97, 4096, 1 << 20])
def test_each_leagues_stream_gives_its_scoring_plays_whatever_the_read_size(league: str, size: int) -> None:
    adapter = SportradarAdapter()
    events, states, rejected = run(adapter, fixture(f"sportradar/{league}_push.jsonstream"), size)
    assert rejected == []
    assert seen(events) == EXPECTED[league]
    assert adapter.gate.dropped == {"late": 1, "duplicate": 1}  # each stream resends one event and sends one late
    assert len({e.event_id for e in events}) == len(events)
    assert states[-1].status is GameStatus.FINAL


def test_mlb_scores_are_runs_not_points() -> None:
    _, states, _ = run(SportradarAdapter(), fixture("sportradar/mlb_push.jsonstream"), 1 << 20)
    final = states[-1]
    assert (final.home_team, final.away_team, final.home_score, final.away_score) == ("NYY", "BOS", 3, 2)
    assert (final.league, final.sport) == ("mlb", "baseball")
    assert final.period == 9


def test_the_team_credited_is_the_one_whose_score_went_up_not_the_one_with_the_ball() -> None:
    events, _, _ = run(SportradarAdapter(), fixture("sportradar/nfl_push.jsonstream"), 1 << 20)
    (safety,) = [e for e in events if e.kind is EventKind.SAFETY]
    assert safety.team_id == "6680d28d-d4d2-49f6-aace-5292d3ec02c2"  # the Chiefs, though the Bills had the ball


def nfl(sequence: int, play_type: str, home: int, away: int, possession: str, **extra) -> bytes:
    body = {
        "payload": {
            "game": {
                "id": "g",
                "status": "inprogress",
                "home": {"id": "kc", "alias": "KC", "points": home},
                "away": {"id": "buf", "alias": "BUF", "points": away},
            },
            "event": {
                "type": "play",
                "id": f"p{sequence}",
                "sequence": sequence,
                "play_type": play_type,
                "scoring_play": True,
                "clock": "5:00",
                "period": {"number": 3},
                "start_situation": {"possession": {"id": possession}},
                **extra,
            },
        },
        "metadata": {"league": "NFL", "operation": "update"},
    }
    return json.dumps(body).encode()


KICKOFF = nfl(0, "kickoff", 0, 0, "buf", scoring_play=False)


def test_a_two_point_try_run_as_an_ordinary_play_is_told_by_the_score_and_the_ball() -> None:
    adapter = SportradarAdapter()
    stream = KICKOFF + nfl(1, "pass", 6, 0, "kc") + nfl(2, "rush", 8, 0, "kc") + nfl(3, "pass", 8, 2, "kc")
    events, _, _ = run(adapter, stream, 1 << 20)
    assert [(e.kind, e.team) for e in events] == [
        (EventKind.TOUCHDOWN, "KC"),
        (EventKind.TWO_POINT_CONVERSION, "KC"),  # 2 points by the side with the ball
        (EventKind.SAFETY, "BUF"),  # 2 points by the side without it
    ]


def test_the_first_message_of_a_game_is_named_by_its_play_when_the_score_before_is_unknown() -> None:
    events, _, _ = run(SportradarAdapter(), nfl(1, "fieldgoal", 10, 3, "kc"), 1 << 20)
    assert [e.kind for e in events] == [EventKind.FIELD_GOAL]
    events, _, _ = run(SportradarAdapter(), nfl(1, "pass", 10, 3, "kc", attribution={"id": "kc"}), 1 << 20)
    assert [(e.kind, e.team) for e in events] == [(EventKind.SCORE, "KC")]


def test_a_deleted_scoring_play_is_a_correction_credited_to_the_side_that_lost_points() -> None:
    adapter = SportradarAdapter()
    deleted = nfl(2, "pass", 0, 0, "kc").replace(b'"operation": "update"', b'"operation": "delete"')
    events, _, _ = run(adapter, KICKOFF + nfl(1, "pass", 6, 0, "kc") + deleted, 1 << 20)
    assert [(e.kind, e.team, e.home_score) for e in events] == [
        (EventKind.TOUCHDOWN, "KC", 6),
        (EventKind.SCORE_CORRECTION, "KC", 0),
    ]


@pytest.mark.parametrize(
    ("gained", "play", "by_offense", "kind"),
    [
        (6, "pass", True, EventKind.TOUCHDOWN),
        (6, "punt", False, EventKind.TOUCHDOWN),
        (7, "rush", True, EventKind.TOUCHDOWN),
        (3, "fieldgoal", True, EventKind.FIELD_GOAL),
        (1, "extrapoint", True, EventKind.EXTRA_POINT),
        (2, "conversion", True, EventKind.TWO_POINT_CONVERSION),
        (2, "rush", True, EventKind.TWO_POINT_CONVERSION),
        (2, "rush", False, EventKind.SAFETY),
        (2, "pass", None, EventKind.SAFETY),
        (5, "pass", True, EventKind.SCORE),
        (None, "extrapoint", None, EventKind.EXTRA_POINT),
        (None, "conversion", None, EventKind.TWO_POINT_CONVERSION),
        (None, "pass", None, EventKind.SCORE),
    ],
)
def test_football_scoring_plays_by_points_play_and_possession(
    gained: int | None, play: str, by_offense: bool | None, kind: EventKind
) -> None:
    assert football_kind(gained, play, by_offense=by_offense) is kind


def test_a_baseball_run_read_on_the_first_message_is_credited_to_the_batting_side() -> None:
    body = {
        "payload": {
            "game": {
                "id": "m",
                "status": "inprogress",
                "home": {"id": "nyy", "abbr": "NYY", "runs": 4},
                "away": {"id": "bos", "abbr": "BOS", "runs": 0},
            },
            "event": {"id": "x", "type": "pitch", "sequence_number": 40},
        },
        "metadata": {"league": "MLB", "event_category": "hit,runscored", "inning": "6", "inning_half": "B"},
    }
    events, _, rejected = run(SportradarAdapter(), json.dumps(body).encode(), 1 << 20)
    assert rejected == []
    assert [(e.kind, e.team, e.home_score, e.period, e.display_clock) for e in events] == [
        (EventKind.RUN, "NYY", 4, 6, "▼6")
    ]


def test_an_mlb_payload_with_a_bad_inning_is_rejected() -> None:
    payload = {
        "payload": {
            "game": {"id": "m", "status": "inprogress", "home": {"id": "h", "abbr": "H"}, "away": {"id": "a"}},
            "event": {"id": "x", "type": "pitch", "inning": 1000},
        },
        "metadata": {"league": "MLB"},
    }
    _, _, rejected = run(SportradarAdapter(), json.dumps(payload).encode(), 1 << 20)
    assert [r.reason for r in rejected] == ["bad_inning"]


def test_a_late_or_resent_delete_with_an_old_snapshot_is_no_correction() -> None:
    adapter = SportradarAdapter()
    stream = KICKOFF + nfl(1, "pass", 7, 0, "kc") + nfl(2, "pass", 14, 0, "kc")
    stale = nfl(3, "pass", 0, 0, "kc").replace(b'"operation": "update"', b'"operation": "delete"')
    foul = nfl(4, "penalty", 14, 0, "kc", scoring_play=False).replace(
        b'"operation": "update"', b'"operation": "delete"'
    )
    events, _, rejected = run(adapter, stream + stale + foul, 1 << 20)
    assert rejected == []
    assert [e.kind for e in events] == [EventKind.TOUCHDOWN, EventKind.TOUCHDOWN]
    assert adapter.stale_deletes == 1
