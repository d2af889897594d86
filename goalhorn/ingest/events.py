"""Turn consecutive ``GameState`` snapshots of a game into ``GameEvent`` values.

Polled feeds only say what the score and clock are now; :class:`GameDiffer` keeps the last snapshot
per game and reports what changed since. Event ids are built from facts of the game, never from when
it was seen: a team's n-th goal in period p is ``<source>:<game>:GOAL:<team id>:<n>:p<p>`` on every
re-poll and in every process, so a poller that derives it again is deduplicated downstream. A goal
taken back (``SCORE_CORRECTION``) would otherwise share its id with the next goal of the same tally;
the period tells them apart when the new one comes in a later period, and, within the period, an
``:r<k>`` suffix counting the team's corrections this differ has seen (a differ that started after
the correction cannot know it, so it leaves the suffix out).

The first snapshot of a game only primes the differ: nothing before it is known, so it says nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from goalhorn.ingest.scoring import football_kind
from goalhorn.models import EventKind, GameEvent, GameState, GameStatus, Sport

HALFTIME = "STATUS_HALFTIME"
END_OF_PERIOD = frozenset({"STATUS_END_PERIOD"})
_UNIT_KIND = {Sport.SOCCER: EventKind.GOAL, Sport.HOCKEY: EventKind.GOAL, Sport.BASEBALL: EventKind.RUN}
_NUMBERED = (EventKind.PERIOD_END, EventKind.HALFTIME)
MAX_BURST = 9
_TICK = timedelta(microseconds=1)
"""Between two events of one snapshot (``GameDiffer.diff``)."""


@dataclass(frozen=True, slots=True)
class Incident:
    """A play a feed itemizes beside the score (a soccer goal or red card), used to say who did it.

    ``key`` identifies the play across polls (the athlete's id where the feed has one), so a red
    card has the same event id every time it is seen.
    """

    kind: Literal["goal", "red_card"]
    team_id: str
    key: str
    player: str | None = None
    clock_s: float | None = None
    display_clock: str = ""
    own_goal: bool = False


@dataclass(slots=True)
class _Game:
    state: GameState
    emitted: set[str] = field(default_factory=set)
    corrections: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Score:
    order: float
    home: bool
    kind: EventKind
    team_score: int
    incident: Incident | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """What one snapshot changes for its game: the events, and what the differ keeps once committed."""

    key: tuple[str, str]
    events: list[GameEvent]
    base: _Game | None
    """What the differ held for the game when the change was made."""
    after: _Game | None
    """What it holds after the commit; None when the snapshot changes nothing (an older one)."""


class GameDiffer:
    """Keeps the last state of every game and reports the events between it and the next one.

    Score events come one per goal (soccer, hockey) or run (baseball), so that a poller that saw
    2-0 arrive in one poll and one that saw 1-0 first derive the same ids; basketball and football
    get one event per team per poll, typed by the points scored. Status events (start, period end,
    halftime, red card, end) are reported once per game. Snapshots older than the last one kept are
    ignored, so an out-of-order poll cannot undo a goal. Not thread-safe: one differ per poller.

    ``diff`` changes nothing and ``commit`` keeps its result, so a caller that failed to act on the
    events (their intents were not published) leaves the differ as it was, and the next snapshot of
    the game reports them again. ``update`` does both at once.
    """

    def __init__(self) -> None:
        self._games: dict[tuple[str, str], _Game] = {}

    def update(self, state: GameState, incidents: Sequence[Incident] = ()) -> list[GameEvent]:
        """Remember ``state`` and return what happened since the previous state of its game."""
        change = self.diff(state, incidents)
        self.commit(change)
        return change.events

    def diff(self, state: GameState, incidents: Sequence[Incident] = ()) -> Change:
        """What happened since the kept state of ``state``'s game; nothing is kept until ``commit``.

        ``incidents`` are the itemized plays the feed sent with this state (soccer details); they
        name goal scorers and raise ``RED_CARD`` events.
        """
        key = (state.source, state.game_id)
        cards = [i for i in incidents if i.kind == "red_card"]
        base = self._games.get(key)
        if base is None:
            primed = {mark for kind, n in _milestones(state) for mark in _marks(state, kind, n)}
            primed.update(_card_id(state, card) for card in cards)
            return Change(key, [], None, _Game(state, primed))
        before = base.state
        if state.observed_at < before.observed_at:
            return Change(key, [], base, None)
        game = _Game(state, set(base.emitted), dict(base.corrections))
        start: list[GameEvent] = []
        rest: list[GameEvent] = []
        for kind, n in _milestones(state):
            marks = _marks(state, kind, n)
            if marks[0] not in game.emitted:
                game.emitted.update(marks)
                (start if kind is EventKind.GAME_START else rest).append(_status_event(state, kind, n, marks[0]))
        red: list[GameEvent] = []
        for card in cards:
            card_id = _card_id(state, card)
            if card_id not in game.emitted:
                game.emitted.add(card_id)
                red.append(_card_event(state, card, card_id))
        events = start + _score_events(before, state, incidents, game.corrections) + red + rest
        # One snapshot's events are stamped 1 µs apart in the order they happened: an alert's event time
        # orders it against another with its collapse key (the delivery supersedes the older one for a
        # device the newer one was claimed for), and two goals of one poll are no tie, so a phone never
        # gets the 0-1 after the 0-2.
        events = [
            e.model_copy(update={"observed_at": e.observed_at + _TICK * i}) if i else e for i, e in enumerate(events)
        ]
        return Change(key, events, base, game)

    def commit(self, change: Change) -> bool:
        """Keep what ``change`` found; False (and nothing kept) if its game was changed since it was
        made, in which case the next snapshot is compared with that newer state instead."""
        if change.after is None:
            return True
        if self._games.get(change.key) is not change.base:
            return False
        self._games[change.key] = change.after
        return True

    def forget(self, source: str, game_id: str) -> None:
        """Drop what is kept about a game (e.g. a day after it ended); its next state primes again."""
        self._games.pop((source, game_id), None)


def _marks(state: GameState, kind: EventKind, n: int) -> tuple[str, ...]:
    """The id of a status event, and the ids it stands for: halftime is also the end of its period."""
    if kind is EventKind.HALFTIME:
        own = _event_id(state.source, state.game_id, kind, n)
        return own, _event_id(state.source, state.game_id, EventKind.PERIOD_END, n)
    if kind is EventKind.PERIOD_END:
        return (_event_id(state.source, state.game_id, kind, n),)
    return (_event_id(state.source, state.game_id, kind),)


def _card_id(state: GameState, card: Incident) -> str:
    return _event_id(state.source, state.game_id, EventKind.RED_CARD, card.team_id, card.key)


def _event_id(source: str, game_id: str, kind: EventKind, *parts: object) -> str:
    return ":".join((source, game_id, kind.value, *map(str, parts)))


def _milestones(state: GameState) -> Iterator[tuple[EventKind, int]]:
    """The status events a state implies have already happened, in the order they happen."""
    if state.status is GameStatus.SCHEDULED:
        return
    live = state.status is GameStatus.LIVE
    if live:
        yield EventKind.GAME_START, 0
    for n in range(1, state.period):
        yield EventKind.PERIOD_END, n
    if live and state.status_detail == HALFTIME:
        yield EventKind.HALFTIME, state.period
    elif live and state.status_detail in END_OF_PERIOD:
        yield EventKind.PERIOD_END, state.period
    if state.status is GameStatus.FINAL:
        yield EventKind.GAME_END, 0


def _status_event(state: GameState, kind: EventKind, n: int, event_id: str) -> GameEvent:
    return _event(state, kind, event_id, period=n if kind in _NUMBERED else None)


def _card_event(state: GameState, incident: Incident, event_id: str) -> GameEvent:
    home = incident.team_id == state.home_team_id
    return _event(
        state,
        EventKind.RED_CARD,
        event_id,
        team_id=incident.team_id,
        team=state.home_team if home else state.away_team,
        player=incident.player,
        display_clock=incident.display_clock,
    )


def _event(state: GameState, kind: EventKind, event_id: str, **fields: object) -> GameEvent:
    values: dict[str, object] = {
        "event_id": event_id,
        "kind": kind,
        "source": state.source,
        "game_id": state.game_id,
        "sport": state.sport,
        "league": state.league,
        "home_team": state.home_team,
        "away_team": state.away_team,
        "home_score": state.home_score,
        "away_score": state.away_score,
        "period": state.period,
        "display_clock": state.display_clock,
        "clock_s": state.clock_s,
        "observed_at": state.observed_at,
    }
    values.update((k, v) for k, v in fields.items() if v is not None and v != "")
    return GameEvent.model_validate(values)


def _score_events(
    before: GameState, after: GameState, incidents: Sequence[Incident], corrections_seen: dict[str, int]
) -> list[GameEvent]:
    """Corrections first (they take back something earlier), then scores in the order they happened.

    ``corrections_seen`` counts each team's corrections so far and is updated here.
    """
    goals = sorted(
        (i for i in incidents if i.kind == "goal"),
        key=lambda i: math.inf if i.clock_s is None else i.clock_s,
    )
    running = {True: before.home_score, False: before.away_score}
    corrections: list[tuple[bool, int]] = []
    scores: list[_Score] = []
    for home, team_id in ((True, after.home_team_id), (False, after.away_team_id)):
        old, new = running[home], after.home_score if home else after.away_score
        if new < old:
            corrections.append((home, new))
        elif new > old:
            scores += _scores_of(after.sport, home, old, new, [g for g in goals if g.team_id == team_id])
    scores.sort(key=lambda s: (s.order, not s.home, s.team_score))
    events = []
    for home, new in corrections:
        prior = dict(running)
        running[home] = new
        team_id = after.home_team_id if home else after.away_team_id
        corrections_seen[team_id] = corrections_seen.get(team_id, 0) + 1
        events.append(_score_event(after, EventKind.SCORE_CORRECTION, home, prior, running, None, corrections_seen))
    for score in scores:
        prior = dict(running)
        running[score.home] = score.team_score
        events.append(_score_event(after, score.kind, score.home, prior, running, score.incident, corrections_seen))
    return events


def _scores_of(sport: Sport, home: bool, old: int, new: int, goals: Sequence[Incident]) -> list[_Score]:
    """Score events for one team going from ``old`` to ``new``; ``goals`` are its itemized goals.

    More than ``MAX_BURST`` goals or runs in one poll is more likely a feed glitch than a game, and
    is reported as one ``SCORE`` rather than a burst of alerts.
    """
    unit = _UNIT_KIND.get(sport)
    if unit is not None and new - old > MAX_BURST:
        return [_Score(math.inf, home, EventKind.SCORE, new)]
    if unit is None:
        if sport is Sport.FOOTBALL:
            kind = football_kind(new - old, None, by_offense=None)
        else:
            kind = EventKind.BASKET if sport is Sport.BASKETBALL else EventKind.SCORE
        return [_Score(math.inf, home, kind, new)]
    scores = []
    for tally in range(old + 1, new + 1):
        incident = goals[tally - 1] if tally <= len(goals) else None
        order = math.inf if incident is None or incident.clock_s is None else incident.clock_s
        scores.append(_Score(order, home, unit, tally, incident))
    return scores


def _score_event(
    state: GameState,
    kind: EventKind,
    home: bool,
    prior: dict[bool, int],
    running: dict[bool, int],
    incident: Incident | None,
    corrections_seen: dict[str, int],
) -> GameEvent:
    team_id = state.home_team_id if home else state.away_team_id
    parts: list[object] = [team_id, running[home], f"p{state.period}"]
    if corrections_seen.get(team_id):
        parts.append(f"r{corrections_seen[team_id]}")
    player = None
    if incident is not None and incident.player:
        player = f"{incident.player} (OG)" if incident.own_goal else incident.player
    return _event(
        state,
        kind,
        _event_id(state.source, state.game_id, kind, *parts),
        team_id=team_id,
        team=state.home_team if home else state.away_team,
        home_score=running[True],
        away_score=running[False],
        home_score_before=prior[True],
        away_score_before=prior[False],
        player=player,
        display_clock=incident.display_clock if incident else None,
    )
