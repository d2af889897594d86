"""Adapter for Sportradar push feeds (``/stream/.../events``): concatenated JSON objects.

The stream is not an array: objects follow each other (``}{``), heartbeats
(``{"heartbeat": {"interval": 5000}}``) come between payloads
(``{"payload": {"game": ..., "event": ...}, "metadata": {...}}``), and a read may end anywhere,
so the tail is buffered until the object completes. Every payload gives the game's state; its event
becomes a typed :class:`GameEvent` when it is one goalhorn knows. Sportradar resends an event when
it amends it and may send an older one late: payloads are ordered by ``(event.sequence,
event.number)`` per game, and late or repeated ones are dropped and counted. A ``delete`` of a
scoring event, or a game score lower than the one before it, becomes a ``SCORE_CORRECTION``; a
delete carries no sequence, so the delete of a non-scoring play is ignored, and so is one whose
snapshot is not at most one play below the known score (sent late or again: ``stale_deletes``).
Event ids are Sportradar's own event ids, so a resend can never make a second alert.

Each league's payload, per Sportradar's push documentation (fixtures in ``tests/fixtures/sportradar``):

- **NBA** (and WNBA, NCAA, G League): ``game.home.points``; ``event.event_type`` ``twopointmade``,
  ``threepointmade``, ``freethrowmade`` (``BASKET``), ``endperiod``, ``opentip``; ``event.period.number``.
- **NHL**: ``game.home.points`` are goals; ``event.event_type`` ``goal``, ``endperiod``;
  ``event.period`` has ``number`` and ``type`` (``REG``, ``OT``, ``SO``). An overtime goal is a
  ``GOAL`` shown as ``OT``; a shootout attempt is not a goal (only the final score carries it).
- **NFL**: ``game.home.points``; ``event.type`` is ``play`` with ``play_type`` (``pass``, ``rush``,
  ``fieldgoal``, ``extrapoint``, ``conversion``...) and ``scoring_play``, or a game event
  (``period_end``, ``game_over``); the quarter in ``event.period.number``; who had the ball in
  ``event.start_situation.possession``. Which scoring play it was comes from the points gained
  (``scoring.py``), since a touchdown, a safety and a two-point conversion are all "pass" or "rush".
- **MLB**: ``game.home.runs`` / ``game.away.runs`` (there is no ``points``); ``event.type`` (and
  ``metadata.event_type``) ``pitch``, ``atbat``, ``steal``, ``lineup``, ``warmup``; the inning and
  its half (``T``/``B``) in ``event.inning`` / ``event.inning_half`` or the metadata, shown as
  ``▲5`` / ``▼5``. A run is a side's runs going up (``RUN``, credited to that side).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from goalhorn.errors import PayloadRejected
from goalhorn.ingest.adapter import FeedAdapter, Parsed
from goalhorn.ingest.quarantine import Quarantine
from goalhorn.ingest.scoring import football_kind
from goalhorn.ingest.sequence import OrderKey, SequenceGate
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
_STATUS_EVENTS = {
    "endperiod": EventKind.PERIOD_END,
    "period_end": EventKind.PERIOD_END,
    "opentip": EventKind.GAME_START,
    "game_over": EventKind.GAME_END,
}
_NO_TEAM = (EventKind.PERIOD_END, EventKind.HALFTIME, EventKind.GAME_START, EventKind.GAME_END)
_SHOOTOUT = frozenset({"SO", "shootout"})
_OVERTIME = frozenset({"OT", "overtime"})
_DELTA_SCORED = (Sport.FOOTBALL, Sport.BASEBALL)
"""Sports whose scoring plays are read from the score, not from the event's name (``scoring.py``)."""
MAX_GAMES = 10_000
_RESYNC = re.compile(r'\{\s*"(?:payload|heartbeat|metadata|locale)"')
_CLOCK = re.compile(r"^(\d{1,3}):(\d{2})(?:\.\d+)?$")


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    gates: OrderedDict[str, OrderKey]
    scores: dict[str, tuple[int, int]]


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
        self.stale_deletes = 0
        """Deletes ignored because their snapshot's score was not one play below the known one."""
        self.heartbeat_interval_s: float | None = None
        """The interval the stream's heartbeats announce (``{"heartbeat": {"interval": ms}}``)."""
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

    def checkpoint(self) -> object:
        return _Checkpoint(self.gate.snapshot(), dict(self._scores))

    def rollback(self, checkpoint: object) -> None:
        if isinstance(checkpoint, _Checkpoint):
            self.gate.restore(checkpoint.gates)
            self._scores = dict(checkpoint.scores)

    def _close(self) -> Parsed:
        return Parsed(rejected=[_rejected(p.reason, p.text) for p in self._splitter.close()])

    def _message(self, message: Any, received_at: datetime, parsed: Parsed) -> None:
        if not isinstance(message, dict):
            raise _Bad("not_a_payload", type(message).__name__)
        if "heartbeat" in message and "payload" not in message:
            self.heartbeats += 1
            beat = message["heartbeat"]
            interval = _int(beat.get("interval")) if isinstance(beat, dict) else None
            if interval is not None and 100 <= interval <= 600_000:
                self.heartbeat_interval_s = interval / 1000
            return
        payload = message.get("payload")
        game = payload.get("game") if isinstance(payload, dict) else None
        event = payload.get("event") if isinstance(payload, dict) else None
        if not isinstance(game, dict) or not isinstance(event, dict):
            raise _Bad("not_a_payload", "no payload.game and payload.event")
        metadata = message.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        league, sport = self._sport(metadata)
        state = _state(game, event, metadata, sport, league, received_at)
        deleted = metadata.get("operation") == "delete"
        name = _name(event, metadata)
        sequence = _int(event.get("sequence"))
        if sequence is None:
            sequence = _int(event.get("sequence_number"))
        if deleted:
            # A delete has no sequence and its game snapshot may be old (sent late, or again after a
            # reconnect): only the delete of a scoring play counts, and only if it takes back what
            # one play can score from the score known now.
            if not (name in SCORING or event.get("scoring_play") is True):
                return
            known = self._scores.get(state.game_id)
            if known is not None and not _plausible_drop(known, state):
                self.stale_deletes += 1
                return
        elif sequence is not None:
            order = (sequence, _int(event.get("number")) or 0)
            if not self.gate.admit(state.game_id, order):
                return
        parsed.states.append(state)
        before = self._scores.pop(state.game_id, None)
        if state.status is not GameStatus.FINAL:
            self._scores[state.game_id] = (state.home_score, state.away_score)
            if len(self._scores) > MAX_GAMES:
                self._scores.pop(next(iter(self._scores)))
        went_back = before is not None and (state.home_score < before[0] or state.away_score < before[1])
        kind: EventKind | None
        side: bool | None
        if deleted or went_back:
            kind, side = EventKind.SCORE_CORRECTION, None
        elif state.sport in _DELTA_SCORED:
            kind, side = _scored(event, metadata, state, before, name)
        else:
            kind, side = _kind(name, event, state), None
        typed = _typed(event, state, sequence, kind, side, before) if kind is not None else None
        if typed is not None and kind is EventKind.SCORE_CORRECTION:
            typed = _credit_correction(typed, state, before)
        if typed is not None:
            parsed.events.append(typed)
        if state.status is GameStatus.FINAL and before is not None and kind is not EventKind.GAME_END:
            # The first message showing the game over (MLB has no game-over event): one GAME_END,
            # with an id of its own so that no later message of the final game makes another.
            final = _typed({**event, "id": "final"}, state, sequence, EventKind.GAME_END, None, before)
            if final is not None:
                parsed.events.append(final)

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


def _state(
    game: dict[str, Any], event: dict[str, Any], metadata: dict[str, Any], sport: Sport, league: str, at: datetime
) -> GameState:
    game_id = _text(game.get("id"))
    if game_id is None:
        raise _Bad("missing_id")
    status = _STATUS.get(str(game.get("status")))
    if status is None:
        raise _Bad("unknown_status", repr(game.get("status"))[:40])
    home, away = game.get("home"), game.get("away")
    if not isinstance(home, dict) or not isinstance(away, dict):
        raise _Bad("missing_team")
    score = "runs" if sport is Sport.BASEBALL else "points"
    if sport is Sport.BASEBALL:
        period, display, clock_s = _inning(event, metadata)
    else:
        period, display, clock_s = _period(event, game)
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
            home_score=_points(home.get(score)),
            away_score=_points(away.get(score)),
            period=period,
            clock_s=clock_s,
            display_clock=display,
            observed_at=at,
        )
    except ValidationError as exc:
        raise _Bad("invalid_state", str(exc.errors()[0].get("loc", ""))) from exc


def _period(event: dict[str, Any], game: dict[str, Any]) -> tuple[int, str, float | None]:
    """Period number, clock shown and clock seconds of a timed sport (overtime shown ``OT``)."""
    period = event.get("period")
    number = _int(period.get("number")) if isinstance(period, dict) else None
    if number is None:
        number = _int(event.get("quarter")) or _int(game.get("quarter")) or 0
    kind = _text(period.get("type")) if isinstance(period, dict) else None
    clock = event.get("clock")
    shown = clock if isinstance(clock, str) and len(clock) <= 12 else ""
    if kind in _SHOOTOUT:
        shown = "SO"
    elif kind in _OVERTIME:
        shown = f"OT {shown}".strip()
    return number, shown, _clock(clock)


def _inning(event: dict[str, Any], metadata: dict[str, Any]) -> tuple[int, str, float | None]:
    """Inning and half (``T`` top, ``B`` bottom) from the event, else from the metadata."""
    inning = _int(event.get("inning"))
    if inning is None:
        raw = metadata.get("inning")
        inning = int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) <= 3 else 0
    half = event.get("inning_half") or metadata.get("inning_half")
    if not 0 <= inning < 100:
        raise _Bad("bad_inning", repr(inning)[:40])
    shown = ""
    if inning:
        shown = f"▲{inning}" if half == "T" else f"▼{inning}" if half == "B" else str(inning)
    return inning, shown, None


def _batting_home(event: dict[str, Any], metadata: dict[str, Any]) -> bool | None:
    half = event.get("inning_half") or metadata.get("inning_half")
    return True if half == "B" else False if half == "T" else None


MAX_PLAY_POINTS = 8
"""The most one play scores (a touchdown with its two-point try)."""


def _plausible_drop(known: tuple[int, int], state: GameState) -> bool:
    """A deleted play's snapshot: neither score above the known one, neither down by more than a play."""
    drops = (known[0] - state.home_score, known[1] - state.away_score)
    return all(0 <= drop <= MAX_PLAY_POINTS for drop in drops)


def _credit_correction(event: GameEvent, state: GameState, before: tuple[int, int] | None) -> GameEvent:
    """A correction belongs to the side whose score went down (to neither if both or none did)."""
    home_down = before is not None and state.home_score < before[0]
    away_down = before is not None and state.away_score < before[1]
    if home_down == away_down:
        return event.model_copy(update={"team_id": None, "team": None})
    if home_down:
        return event.model_copy(update={"team_id": state.home_team_id, "team": state.home_team})
    return event.model_copy(update={"team_id": state.away_team_id, "team": state.away_team})


def _name(event: dict[str, Any], metadata: dict[str, Any]) -> str | None:
    """The event's type: NBA and NHL ``event_type``, NFL ``play_type`` (of a ``play``) or ``type``,
    MLB ``type``; the metadata's ``event_type`` when the event has none."""
    for raw in (event.get("event_type"), event.get("play_type"), event.get("type"), metadata.get("event_type")):
        if isinstance(raw, str) and raw and raw != "play":
            return raw
    return None


def _kind(name: str | None, event: dict[str, Any], state: GameState) -> EventKind | None:
    """The goalhorn event a named Sportradar event is, if any (basketball, hockey)."""
    if name is None:
        return None
    kind = SCORING.get(name)
    if kind is EventKind.GOAL:
        period = event.get("period")
        if isinstance(period, dict) and _text(period.get("type")) in _SHOOTOUT:
            return None
    if kind is None:
        kind = _STATUS_EVENTS.get(name)
        if kind is EventKind.GAME_START and state.period > 1:
            kind = None
        if kind is EventKind.PERIOD_END and state.status is GameStatus.FINAL:
            kind = EventKind.GAME_END
    return kind


def _scored(
    event: dict[str, Any],
    metadata: dict[str, Any],
    state: GameState,
    before: tuple[int, int] | None,
    name: str | None,
) -> tuple[EventKind | None, bool | None]:
    """Football and baseball: the scoring play (and which side, True for home) the score says this
    was, or the game event its name says it is."""
    gains = (0, 0) if before is None else (state.home_score - before[0], state.away_score - before[1])
    if gains[0] > 0 and gains[1] > 0:
        return EventKind.SCORE, None
    home = gains[0] > 0 if gains != (0, 0) else None
    gained = max(gains) if home is not None else None
    if state.sport is Sport.BASEBALL:
        if home is None and before is None and _categories(metadata) & {"runscored"}:
            return EventKind.RUN, _batting_home(event, metadata)
        return (EventKind.RUN, home) if home is not None else (_status_kind(name, state), None)
    if home is None and not (before is None and event.get("scoring_play") is True):
        return _status_kind(name, state), None
    if home is None:
        return football_kind(None, name, by_offense=None), _attributed_home(event, state)
    possession = event.get("start_situation")
    possession = possession.get("possession") if isinstance(possession, dict) else None
    had_ball = _text(possession.get("id")) if isinstance(possession, dict) else None
    scorer = state.home_team_id if home else state.away_team_id
    by_offense = None if had_ball is None else had_ball == scorer
    return football_kind(gained, name, by_offense=by_offense), home


def _status_kind(name: str | None, state: GameState) -> EventKind | None:
    kind = _STATUS_EVENTS.get(name) if name is not None else None
    if kind is EventKind.PERIOD_END and state.sport is Sport.FOOTBALL and state.period == 2:
        return EventKind.HALFTIME
    if kind is EventKind.PERIOD_END and state.sport is Sport.BASEBALL:
        return None
    if kind is EventKind.PERIOD_END and state.status is GameStatus.FINAL:
        return EventKind.GAME_END
    return kind


def _categories(metadata: dict[str, Any]) -> set[str]:
    raw = metadata.get("event_category")
    return set(raw.split(",")) if isinstance(raw, str) else set()


def _attributed_home(event: dict[str, Any], state: GameState) -> bool | None:
    attribution = event.get("attribution")
    team_id = _text(attribution.get("id")) if isinstance(attribution, dict) else None
    return True if team_id == state.home_team_id else False if team_id == state.away_team_id else None


def _typed(
    event: dict[str, Any],
    state: GameState,
    sequence: int | None,
    kind: EventKind,
    side: bool | None,
    before: tuple[int, int] | None,
) -> GameEvent | None:
    """The typed event; ``side`` (True home, False away) credits it when the score said who scored,
    otherwise the event's ``attribution`` does."""
    event_id = _text(event.get("id"))
    if event_id is None:
        return None
    home = side if side is not None else _attributed_home(event, state)
    team_id = None if home is None else state.home_team_id if home else state.away_team_id
    team = None if home is None else state.home_team if home else state.away_team
    if kind in _NO_TEAM:
        team_id = team = None
    return GameEvent(
        event_id=f"{SOURCE}:{state.game_id}:{kind.value}:{event_id}",
        kind=kind,
        source=SOURCE,
        game_id=state.game_id,
        sport=state.sport,
        league=state.league,
        team_id=team_id,
        team=team,
        home_team=state.home_team,
        away_team=state.away_team,
        home_score=state.home_score,
        away_score=state.away_score,
        period=state.period,
        display_clock=state.display_clock,
        player=_player(event),
        sequence=sequence,
        clock_s=state.clock_s,
        home_score_before=None if before is None else before[0],
        away_score_before=None if before is None else before[1],
        observed_at=state.observed_at,
    )


def _player(event: dict[str, Any]) -> str | None:
    """The first player of the event's statistics (NBA, NHL, NFL), or its hitter (MLB)."""
    stats = event.get("statistics")
    first = stats[0] if isinstance(stats, list) and stats else None
    player = first.get("player") if isinstance(first, dict) else event.get("hitter")
    name = (player.get("full_name") or player.get("name")) if isinstance(player, dict) else None
    return name[:80] if isinstance(name, str) and name else None


def _team_name(team: dict[str, Any]) -> str:
    for field in ("alias", "abbr", "name", "market"):
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
