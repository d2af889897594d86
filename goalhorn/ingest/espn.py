"""Adapter for ESPN's site-API scoreboard (``/apis/site/v2/sports/{sport}/{league}/scoreboard``).

One body is one league's games. What the payload does, and what this adapter makes of it:

- scores are strings (``"3"``), home and away are told by ``homeAway``, never by array order;
- ``status.type.state`` is ``pre``/``in``/``post``; a ``post`` game that is not ``completed``
  (postponed, canceled) is not final, it is reported as scheduled with its ``type.name``;
- ``status.period`` counts periods, quarters, halves or innings; NHL overtime is period 4;
- ``status.clock`` is seconds (remaining in hockey and basketball, elapsed in soccer, where
  ``displayClock`` reads ``58'`` or ``90'+5'`` and is kept verbatim); baseball has no clock;
- soccer's ``competitions[0].details`` itemizes goals and cards, returned as incidents that let
  :class:`goalhorn.ingest.events.GameDiffer` name scorers.

A body that is not a scoreboard raises :class:`PayloadRejected`; a malformed game inside a good one
is returned in ``rejected`` and the other games still parse.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import ValidationError

from goalhorn.errors import PayloadRejected
from goalhorn.ingest.adapter import FeedAdapter, Parsed
from goalhorn.ingest.events import Incident
from goalhorn.ingest.quarantine import Quarantine
from goalhorn.models import GameState, GameStatus, Sport

SOURCE = "espn"

LEAGUE_SPORTS: dict[str, Sport] = {
    "nba": Sport.BASKETBALL,
    "wnba": Sport.BASKETBALL,
    "nba-development": Sport.BASKETBALL,
    "mens-college-basketball": Sport.BASKETBALL,
    "womens-college-basketball": Sport.BASKETBALL,
    "nhl": Sport.HOCKEY,
    "nfl": Sport.FOOTBALL,
    "college-football": Sport.FOOTBALL,
    "ufl": Sport.FOOTBALL,
    "cfl": Sport.FOOTBALL,
    "mlb": Sport.BASEBALL,
    "college-baseball": Sport.BASEBALL,
}
"""Known league slugs. Every ESPN soccer slug is dotted (``usa.1``, ``eng.1``, ``uefa.champions``)."""

_SPORT_UIDS = {"s:1": Sport.BASEBALL, "s:20": Sport.FOOTBALL, "s:40": Sport.BASKETBALL}
_SPORT_UIDS |= {"s:70": Sport.HOCKEY, "s:600": Sport.SOCCER}
_STATES = {"pre": GameStatus.SCHEDULED, "in": GameStatus.LIVE, "post": GameStatus.FINAL}
_MAX_SCORE_DIGITS = 3
_MAX_SCORE = 10**_MAX_SCORE_DIGITS
_MAX_PERIOD = 99


@dataclass(frozen=True, slots=True)
class ScoreboardParse:
    """The games of one scoreboard that parsed, the ones that did not, and soccer's itemized plays."""

    states: list[GameState]
    rejected: list[PayloadRejected]
    incidents: dict[str, tuple[Incident, ...]] = field(default_factory=dict)


class _Bad(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class EspnAdapter(FeedAdapter):
    """:func:`parse_scoreboard` behind the adapter contract: one ``feed`` is one scoreboard body."""

    source = SOURCE

    def __init__(
        self, *, sport: Sport | None = None, league: str | None = None, quarantine: Quarantine | None = None
    ) -> None:
        super().__init__(quarantine)
        self._sport = sport
        self._league = league

    def _parse(self, data: bytes, received_at: datetime) -> Parsed:
        board = parse_scoreboard(data, sport=self._sport, league=self._league, observed_at=received_at)
        return Parsed(states=board.states, rejected=board.rejected, incidents=board.incidents)


def sport_of(league: str, uid: object = None) -> Sport | None:
    """The sport of an ESPN league slug (or its ``s:<sport>~l:<league>`` uid), if known."""
    sport = LEAGUE_SPORTS.get(league)
    if sport is None and "." in league:
        sport = Sport.SOCCER
    if sport is None and isinstance(uid, str):
        sport = _SPORT_UIDS.get(uid.partition("~")[0])
    return sport


def parse_scoreboard(
    body: bytes,
    *,
    sport: Sport | None = None,
    league: str | None = None,
    observed_at: datetime,
) -> ScoreboardParse:
    """Parse one scoreboard body into a ``GameState`` per game.

    League and sport come from the payload's ``leagues[0]``; ``league`` and ``sport`` are used only
    when the payload does not say (no league) or says something unknown (a league slug whose sport
    is not known). ``observed_at`` (timezone-aware) is when the body was received.
    """
    if observed_at.tzinfo is None:
        raise ValueError("observed_at must be timezone-aware")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadRejected(SOURCE, "not_json", type(exc).__name__) from exc
    if not isinstance(data, dict) or not isinstance(events := data.get("events"), list):
        raise PayloadRejected(SOURCE, "not_a_scoreboard", "no events list")
    slug, game_sport = _league(data, sport, league)
    states: list[GameState] = []
    rejected: list[PayloadRejected] = []
    incidents: dict[str, tuple[Incident, ...]] = {}
    for index, event in enumerate(events):
        try:
            state, plays = _game(event, game_sport, slug, observed_at)
        except _Bad as bad:
            where = event.get("id") if isinstance(event, dict) else None
            label = f"event {str(where)[:40]}" if isinstance(where, str | int) else f"events[{index}]"
            detail = f"{label}: {bad.detail}" if bad.detail else label
            rejected.append(PayloadRejected(SOURCE, bad.reason, detail))
            continue
        states.append(state)
        if plays:
            incidents[state.game_id] = plays
    return ScoreboardParse(states, rejected, incidents)


def _league(data: dict[str, Any], sport: Sport | None, league: str | None) -> tuple[str, Sport]:
    leagues = data.get("leagues")
    first = leagues[0] if isinstance(leagues, list) and leagues else None
    slug = first.get("slug") if isinstance(first, dict) else None
    uid = first.get("uid") if isinstance(first, dict) else None
    if not isinstance(slug, str) or not slug:
        slug = league
    if slug is None:
        raise PayloadRejected(SOURCE, "missing_league", "no leagues[0].slug and no league given")
    found = sport_of(slug, uid) or sport
    if found is None:
        raise PayloadRejected(SOURCE, "unknown_league", slug[:40])
    return slug, found


def _game(event: object, sport: Sport, league: str, observed_at: datetime) -> tuple[GameState, tuple[Incident, ...]]:
    if not isinstance(event, dict):
        raise _Bad("not_an_event", type(event).__name__)
    game_id = _ident(event.get("id"))
    if game_id is None:
        raise _Bad("missing_id")
    competitions = event.get("competitions")
    competition = competitions[0] if isinstance(competitions, list) and competitions else None
    if not isinstance(competition, dict):
        raise _Bad("missing_competition")
    status = event.get("status")
    if not isinstance(status, dict):
        status = competition.get("status")
    kind = status.get("type") if isinstance(status, dict) else None
    if not isinstance(status, dict) or not isinstance(kind, dict):
        raise _Bad("missing_status")
    state = kind.get("state")
    game_status = _STATES.get(state) if isinstance(state, str) else None
    if game_status is None:
        raise _Bad("unknown_state", repr(state)[:40])
    if game_status is GameStatus.FINAL and kind.get("completed") is False:
        game_status = GameStatus.SCHEDULED
    scheduled = game_status is GameStatus.SCHEDULED
    home, away = _sides(competition.get("competitors"))
    home_id, home_abbr, home_score = _competitor(home, scheduled)
    away_id, away_abbr, away_score = _competitor(away, scheduled)
    name = kind.get("name")
    display_clock = status.get("displayClock")
    try:
        game = GameState(
            game_id=game_id,
            source=SOURCE,
            sport=sport,
            league=league,
            status=game_status,
            status_detail=name if isinstance(name, str) else "",
            home_team=home_abbr,
            away_team=away_abbr,
            home_team_id=home_id,
            away_team_id=away_id,
            home_score=home_score,
            away_score=away_score,
            period=_period(status.get("period")),
            clock_s=None if scheduled or sport is Sport.BASEBALL else _clock(status.get("clock")),
            display_clock=display_clock if isinstance(display_clock, str) else "",
            start_time=_start(event.get("date") or competition.get("date")),
            observed_at=observed_at,
        )
    except ValidationError as exc:
        raise _Bad("invalid_state", str(exc.errors()[0].get("loc", ""))) from exc
    details = competition.get("details")
    return game, _incidents(details) if isinstance(details, list) else ()


def _sides(competitors: object) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(competitors, list) or not competitors:
        raise _Bad("missing_competitors")
    sides: dict[str, dict[str, Any]] = {}
    for competitor in competitors:
        side = competitor.get("homeAway") if isinstance(competitor, dict) else None
        if isinstance(competitor, dict) and side in ("home", "away"):
            if side in sides:
                raise _Bad("bad_home_away", f"two {side} competitors")
            sides[side] = competitor
    if len(sides) != 2:
        raise _Bad("bad_home_away", "no home and away competitors")
    return sides["home"], sides["away"]


def _competitor(competitor: dict[str, Any], scheduled: bool) -> tuple[str, str, int]:
    team = competitor.get("team")
    team_id = _ident(team.get("id")) if isinstance(team, dict) else None
    abbreviation = team.get("abbreviation") if isinstance(team, dict) else None
    if team_id is None or not isinstance(abbreviation, str) or not abbreviation:
        raise _Bad("missing_team", str(competitor.get("homeAway")))
    return team_id, abbreviation, _score(competitor.get("score"), scheduled)


def _score(raw: object, scheduled: bool) -> int:
    """ESPN sends ``"3"``; other ESPN APIs send numbers. A game not started may have none yet.

    No sport here reaches 1000 points, so a longer number is taken for garbage, not a score.
    """
    if isinstance(raw, str):
        if raw.isdigit() and raw.isascii() and len(raw) <= _MAX_SCORE_DIGITS:
            return int(raw)
        if not raw and scheduled:
            return 0
    elif isinstance(raw, int) and not isinstance(raw, bool):
        if 0 <= raw < _MAX_SCORE:
            return raw
    elif isinstance(raw, float):
        if raw.is_integer() and 0 <= raw < _MAX_SCORE:
            return int(raw)
    elif raw is None and scheduled:
        return 0
    raise _Bad("bad_score", repr(raw)[:40])


def _period(raw: object) -> int:
    if raw is None:
        return 0
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= _MAX_PERIOD:
        return raw
    if isinstance(raw, float) and raw.is_integer() and 0 <= raw <= _MAX_PERIOD:
        return int(raw)
    raise _Bad("bad_period", repr(raw)[:40])


def _clock(raw: object) -> float | None:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
        if math.isfinite(value) and value >= 0:
            return value
    return None


def _ident(raw: object) -> str | None:
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return None


@lru_cache(maxsize=4096)
def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _start(raw: object) -> datetime | None:
    """The scheduled start; a missing or unreadable date costs the game nothing but this field."""
    return _parse_time(raw) if isinstance(raw, str) and len(raw) <= 64 else None


def _incidents(details: list[Any]) -> tuple[Incident, ...]:
    """Goals and red cards from soccer's details; an unreadable detail is skipped, not fatal."""
    found: list[Incident] = []
    for detail in details:
        if not isinstance(detail, dict) or detail.get("shootout") is True:
            continue
        kind: Literal["goal", "red_card"]
        if detail.get("scoringPlay") is True:
            kind = "goal"
        elif detail.get("redCard") is True:
            kind = "red_card"
        else:
            continue
        team = detail.get("team")
        team_id = _ident(team.get("id")) if isinstance(team, dict) else None
        if team_id is None:
            continue
        clock = detail.get("clock")
        clock_s = _clock(clock.get("value")) if isinstance(clock, dict) else None
        shown = clock.get("displayValue") if isinstance(clock, dict) else None
        athletes = detail.get("athletesInvolved")
        athlete = athletes[0] if isinstance(athletes, list) and athletes else None
        name = athlete.get("displayName") if isinstance(athlete, dict) else None
        athlete_id = _ident(athlete.get("id")) if isinstance(athlete, dict) else None
        player = name if isinstance(name, str) and name else None
        found.append(
            Incident(
                kind=kind,
                team_id=team_id,
                key=athlete_id or player or (f"t{clock_s:g}" if clock_s is not None else "unknown"),
                player=player,
                clock_s=clock_s,
                display_clock=shown if isinstance(shown, str) else "",
                own_goal=detail.get("ownGoal") is True,
            )
        )
    return tuple(found)
