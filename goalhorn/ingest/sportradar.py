"""Adapter for Sportradar push feeds (``/stream/.../events``): concatenated JSON objects.

The stream is not an array: objects follow each other (``}{``), heartbeats
(``{"heartbeat": {"interval": 5000}}``) come between payloads
(``{"payload": {"game": ..., "event": ...}, "metadata": {...}}``), and a read may end anywhere,
so the tail is buffered until the object completes. Every payload gives the game's state; its event
becomes a typed :class:`GameEvent` when it is one goalhorn knows (a made basket, a goal, a period
end). Sportradar resends an event when it amends it and may send an older one late: payloads are
ordered by ``(event.sequence, event.number)`` per game, and late or repeated ones are dropped and
counted. A ``delete`` of a scoring event, or a game score lower than the one before it, becomes a
``SCORE_CORRECTION``. Event ids are Sportradar's
own event ids, so a resend can never make a second alert.

Verified against the NBA v7 stream sample; the hockey and football event names follow the same
scheme (``goal``, ``touchdown``, ``fieldgoal``, ``safety``).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from goalhorn.errors import PayloadRejected
from goalhorn.ingest.adapter import FeedAdapter, Parsed
from goalhorn.ingest.quarantine import Quarantine
from goalhorn.ingest.sequence import SequenceGate
from goalhorn.ingest.stream import ObjectSplitter
from goalhorn.models import EventKind, GameEvent, GameState, GameStatus, Sport

SOURCE = "sportradar"

LEAGUES: dict[str, Sport] = {
    "nba": Sport.BASKETBALL,
    "wnba": Sport.BASKETBALL,
    "ncaamb": Sport.BASKETBALL,
    "ncaawb": Sport.BASKETBALL,
    "gleague": Sport.BASKETBALL,
    "nhl": Sport.HOCKEY,
    "nfl": Sport.FOOTBALL,
    "ncaafb": Sport.FOOTBALL,
    "mlb": Sport.BASEBALL,
}
_STATUS = {
    "scheduled": GameStatus.SCHEDULED,
    "created": GameStatus.SCHEDULED,
    "postponed": GameStatus.SCHEDULED,
    "cancelled": GameStatus.SCHEDULED,
    "time-tbd": GameStatus.SCHEDULED,
    "inprogress": GameStatus.LIVE,
    "halftime": GameStatus.LIVE,
    "delayed": GameStatus.LIVE,
    "suspended": GameStatus.LIVE,
    "complete": GameStatus.FINAL,
    "closed": GameStatus.FINAL,
}
SCORING: dict[str, EventKind] = {
    "twopointmade": EventKind.BASKET,
    "threepointmade": EventKind.BASKET,
    "freethrowmade": EventKind.BASKET,
    "goal": EventKind.GOAL,
    "touchdown": EventKind.TOUCHDOWN,
    "fieldgoal": EventKind.FIELD_GOAL,
    "safety": EventKind.SAFETY,
}
_STATUS_EVENTS = {"endperiod": EventKind.PERIOD_END, "opentip": EventKind.GAME_START}
MAX_GAMES = 10_000
_RESYNC = re.compile(r'\{\s*"(?:payload|heartbeat|metadata|locale)"')
_CLOCK = re.compile(r"^(\d{1,3}):(\d{2})(?:\.\d+)?$")


class _Bad(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class SportradarAdapter(FeedAdapter):
    """One per stream connection: it buffers partial objects and orders each game's payloads."""

    source = SOURCE

    def __init__(
        self, *, league: str | None = None, quarantine: Quarantine | None = None, max_object_bytes: int = 4 << 20
    ) -> None:
        super().__init__(quarantine)
        self._league = league.lower() if league else None
        self._splitter = ObjectSplitter(max_bytes=max_object_bytes, resync=_RESYNC)
        self.gate = SequenceGate(SOURCE, max_games=MAX_GAMES)
        self.heartbeats = 0
        self._scores: dict[str, tuple[int, int]] = {}

    def _parse(self, data: bytes, received_at: datetime) -> Parsed:
        parsed = Parsed()
        pieces = self._splitter.feed(data)
        while pieces:
            piece = pieces.pop(0)
            if not piece.ok:
                parsed.rejected.append(_rejected(piece.reason, piece.text))
                continue
            try:
                message = json.loads(piece.text)
            except (ValueError, RecursionError):
                cut = self._splitter.resync_after(piece.text)
                bad = piece.text if cut is None else piece.text[:cut]
                parsed.rejected.append(_rejected("not_json", bad))
                if cut is not None:
                    pieces = self._splitter.rescan(piece.text[cut:]) + pieces
                continue
            try:
                self._message(message, received_at, parsed)
            except _Bad as bad:
                parsed.rejected.append(PayloadRejected(SOURCE, bad.reason, bad.detail, piece.text.encode()))
        return parsed

    def _close(self) -> Parsed:
        return Parsed(rejected=[_rejected(p.reason, p.text) for p in self._splitter.close()])

    def _message(self, message: Any, received_at: datetime, parsed: Parsed) -> None:
        if not isinstance(message, dict):
            raise _Bad("not_a_payload", type(message).__name__)
        if "heartbeat" in message and "payload" not in message:
            self.heartbeats += 1
            return
        payload = message.get("payload")
        game = payload.get("game") if isinstance(payload, dict) else None
        event = payload.get("event") if isinstance(payload, dict) else None
        if not isinstance(game, dict) or not isinstance(event, dict):
            raise _Bad("not_a_payload", "no payload.game and payload.event")
        metadata = message.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        league, sport = self._sport(metadata)
        state = _state(game, event, sport, league, received_at)
        operation = metadata.get("operation")
        sequence = _int(event.get("sequence"))
        if sequence is not None and operation != "delete":
            order = (sequence, _int(event.get("number")) or 0)
            if not self.gate.admit(state.game_id, order):
                return
        parsed.states.append(state)
        before = self._scores.pop(state.game_id, None)
        if state.status is not GameStatus.FINAL:
            self._scores[state.game_id] = (state.home_score, state.away_score)
            if len(self._scores) > MAX_GAMES:
                self._scores.pop(next(iter(self._scores)))
        deleted = operation == "delete"
        kind = _kind(event.get("event_type"), state, deleted=deleted)
        went_back = before is not None and (state.home_score < before[0] or state.away_score < before[1])
        if kind is None and went_back and not deleted:
            kind = EventKind.SCORE_CORRECTION
        typed = _typed(event, state, sequence, kind) if kind is not None else None
        if typed is not None and kind is EventKind.SCORE_CORRECTION:
            typed = _credit_correction(typed, state, before)
        if typed is not None:
            parsed.events.append(typed)

    def _sport(self, metadata: dict[str, Any]) -> tuple[str, Sport]:
        raw = metadata.get("league")
        league = raw.lower() if isinstance(raw, str) and raw else self._league
        if league is None:
            raise _Bad("missing_league")
        sport = LEAGUES.get(league)
        if sport is None:
            raise _Bad("unknown_league", league[:40])
        return league, sport


def _rejected(reason: str, text: str) -> PayloadRejected:
    return PayloadRejected(SOURCE, reason, text[:80], text.encode())


def _state(game: dict[str, Any], event: dict[str, Any], sport: Sport, league: str, at: datetime) -> GameState:
    game_id = _text(game.get("id"))
    if game_id is None:
        raise _Bad("missing_id")
    status = _STATUS.get(str(game.get("status")))
    if status is None:
        raise _Bad("unknown_status", repr(game.get("status"))[:40])
    home, away = game.get("home"), game.get("away")
    if not isinstance(home, dict) or not isinstance(away, dict):
        raise _Bad("missing_team")
    period = event.get("period")
    clock = event.get("clock")
    try:
        return GameState(
            game_id=game_id,
            source=SOURCE,
            sport=sport,
            league=league,
            status=status,
            status_detail=str(game.get("status")),
            home_team=_team_name(home),
            away_team=_team_name(away),
            home_team_id=_team_id(home),
            away_team_id=_team_id(away),
            home_score=_points(home.get("points")),
            away_score=_points(away.get("points")),
            period=(_int(period.get("number")) or 0) if isinstance(period, dict) else 0,
            clock_s=_clock(clock),
            display_clock=clock if isinstance(clock, str) and len(clock) <= 16 else "",
            observed_at=at,
        )
    except ValidationError as exc:
        raise _Bad("invalid_state", str(exc.errors()[0].get("loc", ""))) from exc


def _credit_correction(event: GameEvent, state: GameState, before: tuple[int, int] | None) -> GameEvent:
    """A correction belongs to the side whose score went down (to neither if both or none did)."""
    home_down = before is not None and state.home_score < before[0]
    away_down = before is not None and state.away_score < before[1]
    if home_down == away_down:
        return event.model_copy(update={"team_id": None, "team": None})
    if home_down:
        return event.model_copy(update={"team_id": state.home_team_id, "team": state.home_team})
    return event.model_copy(update={"team_id": state.away_team_id, "team": state.away_team})


def _kind(name: object, state: GameState, *, deleted: bool) -> EventKind | None:
    """The goalhorn event a Sportradar event type is, if any; a deleted score is a correction."""
    if not isinstance(name, str):
        return None
    kind = SCORING.get(name)
    if deleted:
        return EventKind.SCORE_CORRECTION if kind is not None else None
    if kind is None:
        kind = _STATUS_EVENTS.get(name)
        if kind is EventKind.GAME_START and state.period > 1:
            kind = None
    return kind


def _typed(event: dict[str, Any], state: GameState, sequence: int | None, kind: EventKind) -> GameEvent | None:
    event_id = _text(event.get("id"))
    if event_id is None:
        return None
    attribution = event.get("attribution")
    team_id = _text(attribution.get("id")) if isinstance(attribution, dict) else None
    team = None
    if team_id == state.home_team_id:
        team = state.home_team
    elif team_id == state.away_team_id:
        team = state.away_team
    else:
        team_id = None
    return GameEvent(
        event_id=f"{SOURCE}:{state.game_id}:{kind.value}:{event_id}",
        kind=kind,
        source=SOURCE,
        game_id=state.game_id,
        sport=state.sport,
        league=state.league,
        team_id=team_id if kind not in (EventKind.PERIOD_END, EventKind.GAME_START) else None,
        team=team if kind not in (EventKind.PERIOD_END, EventKind.GAME_START) else None,
        home_team=state.home_team,
        away_team=state.away_team,
        home_score=state.home_score,
        away_score=state.away_score,
        period=state.period,
        display_clock=state.display_clock,
        player=_player(event),
        sequence=sequence,
        observed_at=state.observed_at,
    )


def _player(event: dict[str, Any]) -> str | None:
    stats = event.get("statistics")
    first = stats[0] if isinstance(stats, list) and stats else None
    player = first.get("player") if isinstance(first, dict) else None
    name = player.get("full_name") if isinstance(player, dict) else None
    return name[:80] if isinstance(name, str) and name else None


def _team_name(team: dict[str, Any]) -> str:
    for field in ("alias", "name", "market"):
        value = team.get(field)
        if isinstance(value, str) and value:
            return value[:40]
    raise _Bad("missing_team", "no alias or name")


def _team_id(team: dict[str, Any]) -> str:
    team_id = _text(team.get("id"))
    if team_id is None:
        raise _Bad("missing_team", "no id")
    return team_id


def _points(raw: object) -> int:
    value = _int(raw)
    if value is None:
        if raw is None:
            return 0
        raise _Bad("bad_score", repr(raw)[:40])
    if not 0 <= value < 1000:
        raise _Bad("bad_score", repr(raw)[:40])
    return value


def _clock(raw: object) -> float | None:
    found = _CLOCK.match(raw) if isinstance(raw, str) else None
    return None if found is None else int(found[1]) * 60.0 + int(found[2])


def _int(raw: object) -> int | None:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    return None


def _text(raw: object) -> str | None:
    if isinstance(raw, str) and 0 < len(raw) <= 100:
        return raw
    return None
