"""The ESPN scoreboard adapter on real payloads (tests/fixtures/espn), their quirks and their breakage."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goalhorn.errors import PayloadRejected
from goalhorn.ingest.espn import ScoreboardParse, parse_scoreboard
from goalhorn.models import GameState, GameStatus, Sport

FIXTURES = Path(__file__).parent / "fixtures" / "espn"
NOW = datetime(2026, 5, 2, 23, 59, tzinfo=UTC)


def payload(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def encode(data: object) -> bytes:
    return json.dumps(data).encode()


def parse(data: object, **kwargs: Any) -> ScoreboardParse:
    return parse_scoreboard(encode(data), observed_at=NOW, **kwargs)


def by_id(result: ScoreboardParse) -> dict[str, GameState]:
    return {state.game_id: state for state in result.states}


def test_nhl_overtime_final_is_period_four_with_home_from_home_away() -> None:
    games = by_id(parse(payload("nhl_scoreboard.json")))

    ot = games["401461562"]
    assert (ot.sport, ot.league, ot.source) == (Sport.HOCKEY, "nhl", "espn")
    assert (ot.status, ot.status_detail, ot.period) == (GameStatus.FINAL, "STATUS_FINAL", 4)
    assert (ot.home_team, ot.home_team_id, ot.home_score) == ("PIT", "16", 3)
    assert (ot.away_team, ot.away_team_id, ot.away_score) == ("CBJ", "29", 2)
    assert ot.start_time == datetime(2022, 9, 25, 17, 0, tzinfo=UTC)
    assert ot.observed_at == NOW

    live = games["401461456"]
    assert (live.status, live.status_detail, live.period) == (GameStatus.LIVE, "STATUS_IN_PROGRESS", 3)
    assert (live.home_team, live.home_score, live.away_team, live.away_score) == ("ARI", 1, "ANA", 3)
    assert (live.clock_s, live.display_clock) == (543.0, "9:03")

    pre = games["401461557"]
    assert (pre.status, pre.period, pre.clock_s) == (GameStatus.SCHEDULED, 0, None)
    assert (pre.home_score, pre.away_score) == (0, 0)


def test_soccer_clock_stoppage_time_is_kept_verbatim() -> None:
    result = parse(payload("usa1_scoreboard.json"))
    games = by_id(result)
    assert not result.rejected

    full_time = games["623597"]
    assert (full_time.sport, full_time.league) == (Sport.SOCCER, "usa.1")
    assert (full_time.status, full_time.status_detail) == (GameStatus.FINAL, "STATUS_FULL_TIME")
    assert (full_time.display_clock, full_time.clock_s, full_time.period) == ("90'+5'", 5400.0, 2)
    assert (full_time.home_team, full_time.home_score, full_time.away_team, full_time.away_score) == (
        "NYC",
        2,
        "NY",
        0,
    )

    first_half = games["623602"]
    assert (first_half.status, first_half.status_detail) == (GameStatus.LIVE, "STATUS_FIRST_HALF")
    assert (first_half.display_clock, first_half.clock_s, first_half.period) == ("45'", 2700.0, 1)
    assert games["623600"].display_clock == "57'"
    assert games["623604"].status is GameStatus.SCHEDULED


def test_soccer_details_become_goal_incidents_without_the_cards() -> None:
    incidents = parse(payload("usa1_scoreboard.json")).incidents

    nyc = incidents["623597"]
    assert [(i.kind, i.team_id, i.player, i.display_clock) for i in nyc] == [
        ("goal", "17606", "Alexander Callens", "1'"),
        ("goal", "17606", "Santiago Rodríguez", "23'"),
    ]
    own_goal = incidents["623600"][-1]
    assert (own_goal.player, own_goal.team_id, own_goal.own_goal, own_goal.clock_s) == (
        "Lukas MacNaughton",
        "12011",
        True,
        2799.0,
    )
    assert "623604" not in incidents


def test_scores_are_strings_in_the_payload_and_ints_in_the_state() -> None:
    data = payload("nba_scoreboard_in.json")
    raw = {c["homeAway"]: c["score"] for c in data["events"][0]["competitions"][0]["competitors"]}
    assert raw == {"home": "87", "away": "92"}

    (game,) = parse(data).states

    assert (game.home_team, game.home_score, game.away_team, game.away_score) == ("BOS", 87, "PHI", 92)
    assert (game.status, game.period, game.clock_s, game.display_clock) == (GameStatus.LIVE, 4, 521.0, "8:41")


def test_numeric_scores_from_other_espn_apis_are_accepted() -> None:
    data = payload("nba_scoreboard_in.json")
    for competitor in data["events"][0]["competitions"][0]["competitors"]:
        competitor["score"] = int(competitor["score"])

    (game,) = parse(data).states

    assert (game.home_score, game.away_score) == (87, 92)


def test_home_and_away_come_from_home_away_not_array_order() -> None:
    data = payload("nhl_scoreboard.json")
    swapped = copy.deepcopy(data)
    for event in swapped["events"]:
        event["competitions"][0]["competitors"].reverse()
    assert swapped["events"][0]["competitions"][0]["competitors"][0]["homeAway"] == "away"

    assert parse(swapped).states == parse(data).states


def test_final_nba_games() -> None:
    games = by_id(parse(payload("nba_scoreboard_post.json")))

    ind = games["401736810"]
    assert (ind.status, ind.home_team, ind.home_score, ind.away_team, ind.away_score) == (
        GameStatus.FINAL,
        "IND",
        119,
        "NO",
        104,
    )
    assert games["401736811"].away_team_id == "2"


@pytest.mark.parametrize(
    ("slug", "sport"),
    [
        ("nba", Sport.BASKETBALL),
        ("wnba", Sport.BASKETBALL),
        ("mens-college-basketball", Sport.BASKETBALL),
        ("nhl", Sport.HOCKEY),
        ("nfl", Sport.FOOTBALL),
        ("college-football", Sport.FOOTBALL),
        ("mlb", Sport.BASEBALL),
        ("usa.1", Sport.SOCCER),
        ("eng.1", Sport.SOCCER),
        ("esp.1", Sport.SOCCER),
        ("uefa.champions", Sport.SOCCER),
    ],
)
def test_sport_and_league_come_from_the_payload(slug: str, sport: Sport) -> None:
    data = payload("nba_scoreboard_in.json")
    data["leagues"][0]["slug"] = slug
    del data["leagues"][0]["uid"]

    (game,) = parse(data, sport=Sport.HOCKEY if sport is not Sport.HOCKEY else Sport.SOCCER).states

    assert (game.sport, game.league) == (sport, slug)


def test_unknown_league_uses_the_given_sport_or_is_rejected() -> None:
    data = payload("nba_scoreboard_in.json")
    data["leagues"][0]["slug"] = "some-new-league"
    del data["leagues"][0]["uid"]

    (game,) = parse(data, sport=Sport.BASKETBALL).states
    assert (game.sport, game.league) == (Sport.BASKETBALL, "some-new-league")

    with pytest.raises(PayloadRejected) as rejected:
        parse(data)
    assert (rejected.value.source, rejected.value.reason) == ("espn", "unknown_league")


def test_league_uid_tells_the_sport_of_an_unlisted_slug() -> None:
    data = payload("nba_scoreboard_in.json")
    data["leagues"][0]["slug"] = "nba-summer-las-vegas"

    (game,) = parse(data).states

    assert game.sport is Sport.BASKETBALL


def test_a_payload_without_leagues_uses_the_given_league() -> None:
    data = payload("nhl_scoreboard.json")
    del data["leagues"]

    assert {s.league for s in parse(data, league="nhl").states} == {"nhl"}
    with pytest.raises(PayloadRejected) as rejected:
        parse(data)
    assert rejected.value.reason == "missing_league"


def test_baseball_period_is_the_inning_and_has_no_clock() -> None:
    data = payload("nba_scoreboard_in.json")
    data["leagues"][0]["slug"] = "mlb"
    event = data["events"][0]
    for status in (event["status"], event["competitions"][0]["status"]):
        status.update(clock=0.0, displayClock="0:00", period=7)

    (game,) = parse(data).states

    assert (game.sport, game.period, game.clock_s) == (Sport.BASEBALL, 7, None)


def test_a_postponed_game_is_not_final() -> None:
    data = payload("nhl_scoreboard.json")
    event = data["events"][2]
    event["status"]["type"].update(name="STATUS_POSTPONED", state="post", completed=False, description="Postponed")

    games = by_id(parse(data))

    assert games[event["id"]].status is GameStatus.SCHEDULED
    assert games[event["id"]].status_detail == "STATUS_POSTPONED"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not_json"),
        (b"<html><body>502 Bad Gateway</body></html>", "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (b"[" * 100_000, "not_json"),
        (b"[]", "not_a_scoreboard"),
        (b'"events"', "not_a_scoreboard"),
        (b'{"leagues": [], "events": {}}', "not_a_scoreboard"),
        (b'{"code": 404, "message": "not found"}', "not_a_scoreboard"),
    ],
)
def test_a_body_that_is_not_a_scoreboard_is_rejected(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadRejected) as rejected:
        parse_scoreboard(body, observed_at=NOW)

    assert (rejected.value.source, rejected.value.reason) == ("espn", reason)


def test_a_truncated_body_is_rejected() -> None:
    body = (FIXTURES / "usa1_scoreboard.json").read_bytes()

    with pytest.raises(PayloadRejected) as rejected:
        parse_scoreboard(body[: len(body) // 2], observed_at=NOW)

    assert rejected.value.reason == "not_json"


def test_an_event_without_competitors_is_reported_and_the_others_still_parse() -> None:
    data = payload("nhl_scoreboard.json")
    del data["events"][1]["competitions"][0]["competitors"]

    result = parse(data)

    assert sorted(by_id(result)) == ["401461557", "401461562"]
    (rejected,) = result.rejected
    assert (rejected.source, rejected.reason) == ("espn", "missing_competitors")
    assert "401461456" in rejected.detail


@pytest.mark.parametrize(
    "score", ["abc", "-1", "3.5", "", " 2", "²", "1000", "9" * 5000, None, True, [], -2, 10**6, math.inf]
)
def test_a_score_that_is_not_a_number_rejects_only_its_game(score: object) -> None:
    data = payload("usa1_scoreboard.json")
    data["events"][1]["competitions"][0]["competitors"][1]["score"] = score

    result = parse_scoreboard(json.dumps(data).encode(), observed_at=NOW)

    assert len(result.states) == 3
    assert "623600" not in by_id(result)
    assert [r.reason for r in result.rejected] == ["bad_score"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e.clear(), "missing_id"),
        (lambda e: e.update(competitions=[]), "missing_competition"),
        (lambda e: e.pop("status") and e["competitions"][0].pop("status"), "missing_status"),
        (lambda e: e["status"]["type"].update(state="halftime"), "unknown_state"),
        (lambda e: e["competitions"][0]["competitors"][0].update(homeAway="away"), "bad_home_away"),
        (lambda e: e["competitions"][0]["competitors"][0]["team"].pop("abbreviation"), "missing_team"),
        (lambda e: e["status"].update(period="2nd"), "bad_period"),
        (lambda e: e["status"].update(period=10**9), "bad_period"),
    ],
)
def test_each_malformed_event_has_its_reason(mutate: Any, reason: str) -> None:
    data = payload("nhl_scoreboard.json")
    mutate(data["events"][1])

    result = parse(data)

    assert [r.reason for r in result.rejected] == [reason]
    assert len(result.states) == 2


def test_an_event_that_is_not_an_object_is_reported() -> None:
    data = payload("nhl_scoreboard.json")
    data["events"].insert(1, "surprise")

    result = parse(data)

    assert [r.reason for r in result.rejected] == ["not_an_event"]
    assert "events[1]" in result.rejected[0].detail
    assert len(result.states) == 3


def test_observed_at_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_scoreboard(b"{}", observed_at=datetime(2026, 5, 2, 23, 0))


def _paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


REAL = {name: payload(name) for name in ("nhl_scoreboard.json", "usa1_scoreboard.json")}
PATHS = {name: _paths(data) for name, data in REAL.items()}
WRONG = st.sampled_from([None, True, 0, -1, 1.5, math.nan, "", "x", "-3", [], {}, [1], {"a": 1}])


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(REAL)))
    data = copy.deepcopy(REAL[name])
    for path in draw(st.lists(st.sampled_from(PATHS[name]), min_size=1, max_size=6)):
        parent: Any = data
        for step in path[:-1]:
            try:
                parent = parent[step]
            except (KeyError, IndexError, TypeError):
                break
        else:
            last = path[-1]
            in_list = isinstance(parent, list) and isinstance(last, int) and last < len(parent)
            container_ok = isinstance(parent, dict) or in_list
            if not container_ok:
                continue
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(last, None)
            elif isinstance(parent, list) and draw(st.booleans()):
                del parent[last]
            else:
                parent[last] = draw(WRONG)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_real_payload_parses_or_is_rejected_and_nothing_else_escapes(data: dict[str, Any]) -> None:
    outcome: ScoreboardParse | PayloadRejected
    try:
        outcome = parse(data)
    except PayloadRejected as exc:
        outcome = exc
    if isinstance(outcome, PayloadRejected):
        assert outcome.source == "espn"
        assert outcome.reason
        return
    assert len(outcome.states) + len(outcome.rejected) == len(data["events"])
    for state in outcome.states:
        assert isinstance(state, GameState)
        assert min(state.home_score, state.away_score, state.period) >= 0
        assert state.clock_s is None or math.isfinite(state.clock_s)
        assert GameState.model_validate_json(state.to_json()) == state
    for bad in outcome.rejected:
        assert isinstance(bad, PayloadRejected)
        assert (bad.source, bool(bad.reason)) == ("espn", True)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_are_rejected_or_parsed(body: bytes) -> None:
    try:
        result = parse_scoreboard(body, observed_at=NOW)
    except PayloadRejected:
        return
    assert isinstance(result, ScoreboardParse)
