"""Adapter for Stats Perform (Opta) MA3 match events: one ``feed`` is one MA3 document.

The document holds ``matchInfo`` (contestants with ``position`` home/away and a ``code``) and
``liveData`` (``matchDetails`` with ``matchStatus`` and ``scores``, and ``event[]``). What becomes
a typed event:

- ``typeId`` 16, a goal: ``GOAL`` for ``contestantId``, or for the other side when it carries
  qualifier 28 (own goal); the running score counts goals in match-time order;
- ``typeId`` 17, a card with qualifier 32 (second yellow) or 33 (red): ``RED_CARD``;
- ``typeId`` 32 (period start) of period 1: ``GAME_START``; ``typeId`` 30 (period end) of period 1:
  ``HALFTIME``, of periods 2-5: ``PERIOD_END``; ``matchStatus`` "Played": ``GAME_END``.

Each event id is built from Opta's own event ``id`` (or the period), so polling the same document
again yields the same ids. MA3 carries no sequence number, so ``sequence`` is null. A malformed
event is rejected on its own; the rest of the document still counts.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from goalhorn.errors import PayloadRejected
from goalhorn.ingest.adapter import FeedAdapter, Parsed
from goalhorn.models import EventKind, GameEvent, GameState, GameStatus, Sport

SOURCE = "statsperform"


def matchevent_url(base_url: str, outlet_key: str, fixture_id: str) -> str:
    """The MA3 (match events) document of one fixture, as JSON (``_rt=b``: outlet-key access)."""
    return f"{base_url.rstrip('/')}/{outlet_key}/{fixture_id}?_rt=b&_fmt=json"


GOAL, CARD, PERIOD_END, PERIOD_START = 16, 17, 30, 32
OWN_GOAL, SECOND_YELLOW, RED = 28, 32, 33
_PLAYING = range(1, 6)
_STATUS = {
    "Fixture": GameStatus.SCHEDULED,
    "Postponed": GameStatus.SCHEDULED,
    "Cancelled": GameStatus.SCHEDULED,
    "Playing": GameStatus.LIVE,
    "Suspended": GameStatus.LIVE,
    "Played": GameStatus.FINAL,
    "Awarded": GameStatus.FINAL,
}


class _Bad(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class StatsPerformAdapter(FeedAdapter):
    source = SOURCE

    def _parse(self, data: bytes, received_at: datetime) -> Parsed:
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise PayloadRejected(SOURCE, "not_json", type(exc).__name__) from exc
        if not isinstance(doc, dict):
            raise PayloadRejected(SOURCE, "not_ma3", "not an object")
        info, live = doc.get("matchInfo"), doc.get("liveData")
        if not isinstance(info, dict) or not isinstance(live, dict):
            raise PayloadRejected(SOURCE, "not_ma3", "no matchInfo and liveData")
        try:
            match = _Match.of(info, received_at)
        except _Bad as bad:
            raise PayloadRejected(SOURCE, bad.reason, bad.detail) from None
        raw_events = live.get("event")
        details = live.get("matchDetails")
        details = details if isinstance(details, dict) else {}
        parsed = Parsed()
        good: list[dict[str, Any]] = []
        for raw in raw_events if isinstance(raw_events, list) else []:
            try:
                good.append(_checked(raw, match))
            except _Bad as bad:
                parsed.rejected.append(PayloadRejected(SOURCE, bad.reason, bad.detail))
        good.sort(key=_order)
        parsed.events = match.events(good, details)
        try:
            parsed.states.append(match.state(good, details))
        except _Bad as bad:
            parsed.rejected.append(PayloadRejected(SOURCE, bad.reason, bad.detail))
        return parsed


class _Match:
    def __init__(self, game_id: str, league: str, teams: dict[str, tuple[str, str]], at: datetime) -> None:
        self.game_id = game_id
        self.league = league
        self.home_id, self.home = teams["home"]
        self.away_id, self.away = teams["away"]
        self.at = at
        self.home_score = 0
        self.away_score = 0
        self.period = 0

    @classmethod
    def of(cls, info: dict[str, Any], at: datetime) -> _Match:
        game_id = _text(info.get("id"))
        if game_id is None:
            raise _Bad("missing_id")
        sport = info.get("sport")
        name = sport.get("name") if isinstance(sport, dict) else "Soccer"
        if name not in ("Soccer", "Football"):
            raise _Bad("unknown_sport", repr(name)[:40])
        competition = info.get("competition")
        code = competition.get("competitionCode") if isinstance(competition, dict) else None
        league = code.lower()[:40] if isinstance(code, str) and code else "soccer"
        teams: dict[str, tuple[str, str]] = {}
        contestants = info.get("contestant")
        for contestant in contestants if isinstance(contestants, list) else []:
            if not isinstance(contestant, dict):
                continue
            position, team_id = contestant.get("position"), _text(contestant.get("id"))
            label = next(
                (_text(contestant.get(k)) for k in ("code", "shortName", "name") if _text(contestant.get(k))), None
            )
            if position in ("home", "away") and team_id and label and position not in teams:
                teams[str(position)] = (team_id, label)
        if len(teams) != 2:
            raise _Bad("bad_home_away", "no home and away contestant")
        return cls(game_id, league, teams, at)

    def events(self, events: list[dict[str, Any]], details: dict[str, Any]) -> list[GameEvent]:
        out: list[GameEvent] = []
        seen_periods: set[tuple[int, int]] = set()
        for raw in events:
            type_id, period = raw["typeId"], raw["periodId"]
            if period in _PLAYING:
                self.period = max(self.period, period)
            qualifiers = raw["_qualifiers"]
            if type_id == GOAL:
                own = OWN_GOAL in qualifiers
                home = (raw["contestantId"] == self.home_id) != own
                if home:
                    self.home_score += 1
                else:
                    self.away_score += 1
                player = raw["_player"]
                if player and own:
                    player = f"{player} (OG)"
                out.append(self._event(EventKind.GOAL, str(raw["id"]), raw, home=home, player=player))
            elif type_id == CARD and qualifiers & {SECOND_YELLOW, RED}:
                home = raw["contestantId"] == self.home_id
                out.append(self._event(EventKind.RED_CARD, str(raw["id"]), raw, home=home, player=raw["_player"]))
            elif type_id in (PERIOD_START, PERIOD_END) and period in _PLAYING and (type_id, period) not in seen_periods:
                seen_periods.add((type_id, period))
                if type_id == PERIOD_START and period == 1:
                    out.append(self._event(EventKind.GAME_START, "", raw))
                elif type_id == PERIOD_END:
                    kind = EventKind.HALFTIME if period == 1 else EventKind.PERIOD_END
                    out.append(self._event(kind, str(period), raw))
        if details.get("matchStatus") == "Played":
            out.append(self._event(EventKind.GAME_END, "", None))
        return out

    def state(self, events: list[dict[str, Any]], details: dict[str, Any]) -> GameState:
        status = _STATUS.get(str(details.get("matchStatus")))
        if status is None:
            status = GameStatus.LIVE if events else GameStatus.SCHEDULED
        last = events[-1] if events else None
        minutes = f"{last['timeMin']}'" if last is not None and status is GameStatus.LIVE else ""
        try:
            return GameState(
                game_id=self.game_id,
                source=SOURCE,
                sport=Sport.SOCCER,
                league=self.league,
                status=status,
                status_detail=str(details.get("matchStatus", ""))[:40],
                home_team=self.home,
                away_team=self.away,
                home_team_id=self.home_id,
                away_team_id=self.away_id,
                home_score=self.home_score,
                away_score=self.away_score,
                period=self.period,
                clock_s=last["timeMin"] * 60.0 + last["timeSec"] if last is not None and minutes else None,
                display_clock=minutes,
                observed_at=self.at,
            )
        except ValidationError as exc:
            raise _Bad("invalid_state", str(exc.errors()[0].get("loc", ""))) from exc

    def _event(
        self,
        kind: EventKind,
        key: str,
        raw: dict[str, Any] | None,
        *,
        home: bool | None = None,
        player: str | None = None,
    ) -> GameEvent:
        team_id = None if home is None else (self.home_id if home else self.away_id)
        return GameEvent(
            event_id=":".join(p for p in (SOURCE, self.game_id, kind.value, key) if p),
            kind=kind,
            source=SOURCE,
            game_id=self.game_id,
            sport=Sport.SOCCER,
            league=self.league,
            team_id=team_id,
            team=None if home is None else (self.home if home else self.away),
            home_team=self.home,
            away_team=self.away,
            home_score=self.home_score,
            away_score=self.away_score,
            period=raw["periodId"] if raw is not None and raw["periodId"] in _PLAYING else self.period,
            display_clock=f"{raw['timeMin']}'" if raw is not None else "",
            player=player,
            observed_at=self.at,
        )


def _checked(raw: object, match: _Match) -> dict[str, Any]:
    """The fields this adapter reads, validated; qualifiers as a set of ids."""
    if not isinstance(raw, dict):
        raise _Bad("bad_event", type(raw).__name__)
    where = f"event {str(raw.get('id'))[:20]}"
    for field in ("id", "typeId", "periodId", "timeMin", "timeSec"):
        value = raw.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**12:
            raise _Bad("bad_event", f"{where}: {field}")
    if raw["timeMin"] > 300 or raw["timeSec"] > 59:
        raise _Bad("bad_event", f"{where}: time")
    contestant = raw.get("contestantId")
    if raw["typeId"] in (GOAL, CARD) and contestant not in (match.home_id, match.away_id):
        raise _Bad("unknown_contestant", where)
    qualifiers = raw.get("qualifier")
    ids = set()
    for qualifier in qualifiers if isinstance(qualifiers, list) else []:
        qid = qualifier.get("qualifierId") if isinstance(qualifier, dict) else None
        if isinstance(qid, int):
            ids.add(qid)
    name = raw.get("playerName")
    return {
        **raw,
        "_qualifiers": ids,
        "_player": name[:80] if isinstance(name, str) and name else None,
    }


def _order(raw: dict[str, Any]) -> tuple[int, int, int, int]:
    period = raw["periodId"]
    rank = period if period in _PLAYING else (-1 if period in (15, 16) else 99)
    return (rank, raw["timeMin"], raw["timeSec"], raw["id"])


def _text(raw: object) -> str | None:
    if isinstance(raw, str) and 0 < len(raw) <= 100:
        return raw
    return None
