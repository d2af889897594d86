"""The recorded game night: it loads, it is real ESPN bytes, and replayed it makes a night of events."""

from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from goalhorn.demo.gamenight import Snapshot, load_gamenight
from goalhorn.ingest.espn import parse_scoreboard
from goalhorn.ingest.events import GameDiffer
from goalhorn.models import EventKind, GameEvent, GameState, GameStatus, Sport

START = datetime(2026, 5, 2, 22, 45, tzinfo=UTC)


@pytest.fixture(scope="module")
def night() -> list[Snapshot]:
    return load_gamenight()


@pytest.fixture(scope="module")
def replay(night: list[Snapshot]) -> tuple[list[list[GameState]], list[GameEvent]]:
    """Every poll's states, and every event a differ derives from them in order."""
    differ = GameDiffer()
    polls: list[list[GameState]] = []
    events: list[GameEvent] = []
    for snap in night:
        parsed = parse_scoreboard(snap.body, observed_at=START + timedelta(seconds=snap.t))
        assert parsed.rejected == []
        polls.append(parsed.states)
        for state in parsed.states:
            events += differ.update(state, parsed.incidents.get(state.game_id, ()))
    return polls, events


def test_the_night_loads_in_time_order_as_real_bytes(night: list[Snapshot]) -> None:
    assert len(night) >= 100
    assert all(a.t <= b.t for a, b in itertools.pairwise(night))
    assert Counter(s.league for s in night).keys() == {"nhl", "usa.1", "nba"}
    for snap in night:
        board = json.loads(snap.body)
        assert board["leagues"][0]["slug"] == snap.league
        assert isinstance(board["events"], list)
        assert board["events"]
        assert b'"links"' not in snap.body
        assert b'"logos"' not in snap.body


def test_every_league_is_polled_from_before_its_games_until_after(night: list[Snapshot]) -> None:
    per_league = Counter(s.league for s in night)
    assert all(40 <= count <= 60 for count in per_league.values())
    for league in per_league:
        polls = [s for s in night if s.league == league]
        first = parse_scoreboard(polls[0].body, observed_at=START).states
        last = parse_scoreboard(polls[-1].body, observed_at=START).states
        assert {s.status for s in first} == {GameStatus.SCHEDULED}
        assert {s.status for s in last} == {GameStatus.FINAL}


def test_the_night_has_games_of_several_sports(replay: tuple[list[list[GameState]], list[GameEvent]]) -> None:
    polls, _ = replay
    games = {(s.sport, s.game_id) for states in polls for s in states}
    assert len(games) >= 3
    assert len({sport for sport, _ in games}) >= 2
    sports = Counter(sport for sport, _ in games)
    assert sports == {Sport.HOCKEY: 2, Sport.SOCCER: 2, Sport.BASKETBALL: 1}


def test_replayed_it_scores_the_goals_its_scores_say(
    replay: tuple[list[list[GameState]], list[GameEvent]],
) -> None:
    polls, events = replay
    last: dict[str, GameState] = {}
    increases = decreases = jumps = 0
    for states in polls:
        for state in states:
            before = last.get(state.game_id)
            last[state.game_id] = state
            if before is None or state.sport is Sport.BASKETBALL:
                continue
            for old, new in ((before.home_score, state.home_score), (before.away_score, state.away_score)):
                increases += max(new - old, 0)
                decreases += max(old - new, 0)
                jumps += new - old >= 2

    goals = [e for e in events if e.kind is EventKind.GOAL]
    assert len(goals) == increases >= 10
    assert jumps >= 1
    assert decreases == 1
    assert [e.kind for e in events].count(EventKind.SCORE_CORRECTION) == 1
    assert len({e.event_id for e in goals}) == len(goals)


def test_replayed_it_has_halftime_overtime_and_every_game_ends(
    replay: tuple[list[list[GameState]], list[GameEvent]],
) -> None:
    polls, events = replay
    kinds = Counter(e.kind for e in events)
    games = {s.game_id for states in polls for s in states}
    assert kinds[EventKind.GAME_START] == kinds[EventKind.GAME_END] == len(games)
    assert kinds[EventKind.HALFTIME] >= 1
    assert any(s.sport is Sport.HOCKEY and s.period == 4 for states in polls for s in states)
    overtime_end = [e for e in events if e.kind is EventKind.GAME_END and e.sport is Sport.HOCKEY and e.period == 4]
    assert len(overtime_end) == 1


def test_soccer_goals_are_named_and_the_nba_score_only_goes_up(
    replay: tuple[list[list[GameState]], list[GameEvent]],
) -> None:
    polls, events = replay
    soccer_goals = [e for e in events if e.kind is EventKind.GOAL and e.sport is Sport.SOCCER]
    assert soccer_goals
    assert all(e.player for e in soccer_goals)

    scores: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for states in polls:
        for s in states:
            if s.sport is Sport.BASKETBALL:
                scores[s.game_id].append((s.home_score, s.away_score))
    (nba,) = scores.values()
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(nba))
    assert min(nba[-1]) >= 80
    assert any(e.kind is EventKind.BASKET for e in events)


def test_the_shipped_file_is_small() -> None:
    data = resources.files("goalhorn.demo").joinpath("data", "gamenight.jsonl.gz")
    assert len(data.read_bytes()) < 300_000


def _write(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    return path


def test_a_recording_can_be_loaded_from_a_path(tmp_path: Path) -> None:
    board = {"leagues": [{"slug": "nhl"}], "events": []}
    line = json.dumps({"t": 1.5, "sport": "hockey", "league": "nhl", "scoreboard": board})

    (snap,) = load_gamenight(_write(tmp_path / "night.jsonl.gz", [line, ""]))

    assert (snap.t, snap.sport, snap.league, json.loads(snap.body)) == (1.5, "hockey", "nhl", board)


@pytest.mark.parametrize(
    "lines",
    [
        ["not json"],
        ['{"t": 1, "sport": "hockey", "league": "nhl"}'],
        ['{"t": "soon", "sport": "hockey", "league": "nhl", "scoreboard": {}}'],
        ['{"t": 1, "sport": "hockey", "league": "nhl", "scoreboard": []}'],
        [
            '{"t": 5, "sport": "hockey", "league": "nhl", "scoreboard": {}}',
            '{"t": 4, "sport": "hockey", "league": "nhl", "scoreboard": {}}',
        ],
    ],
)
def test_a_malformed_recording_names_its_line(tmp_path: Path, lines: list[str]) -> None:
    with pytest.raises(ValueError, match="game night line"):
        load_gamenight(_write(tmp_path / "bad.jsonl.gz", lines))
