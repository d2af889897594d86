"""The ingest stage: what adapters parse becomes live state, deduplicated events and intents.

``Ingestor.absorb`` takes one adapter result and turns its game states into events (by diffing
consecutive states for polled feeds; push feeds bring their own), claims the events not acted on
before, re-evaluates the edge engine with every state and book update, and publishes the intents of
the claimed events (alert rules) and an edge intent for every signal on the bus. Only what the broker
confirmed counts as done: those events are marked done, and then the differ keeps the new state of
their game and live state stores it. A game whose event could not be built or published keeps its
old state, so the next poll derives the event again and the retry is not taken for a duplicate.
Likewise a signal is reported sent to the edge engine only once its intents were confirmed, so a
publish that failed (the broker down) is signalled again on the next poll or book update.

With ``GOALHORN_LIVE_ACTIVITIES`` every state change of a game (with the events of that change) also
becomes a Live Activity intent (``goalhorn.intents.liveactivity``), after the game's alerts, when
``goalhorn.intents.live_pacing`` claims it; a claim whose intent was not confirmed is put back, so the
next poll publishes the change again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from goalhorn.bus import Bus
from goalhorn.catalog import CatalogFile
from goalhorn.catalog.rules import Rule
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.dedup import EventDedup
from goalhorn.ingest.events import Change, GameDiffer
from goalhorn.ingest.facts import WinFacts, need_win_facts
from goalhorn.ingest.fusion import EdgeEngine
from goalhorn.ingest.live import LiveState
from goalhorn.ingest.winprob import ParamTable, WinModel
from goalhorn.intents.edge import edge_intents
from goalhorn.intents.live_pacing import LivePacing
from goalhorn.intents.liveactivity import live_intent
from goalhorn.intents.rules import Original, corrections_for, intents_for, originals_of
from goalhorn.keys import Keys
from goalhorn.models import SCORING_KINDS, EdgeSignal, EventKind, GameEvent, GameState, Intent, utcnow
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

UNSENT_KEPT = 20
"""Events kept per game for a Live Activity update that could not be published (the newest)."""


@dataclass(slots=True)
class Absorbed:
    """What one ``absorb`` did."""

    states_written: int = 0
    events: list[GameEvent] = field(default_factory=list)
    """Events whose intents were published (and confirmed) by this absorb."""
    duplicates: int = 0
    """Events dropped because their id was acted on before."""
    held: int = 0
    """Events left for later because another attempt at them is in flight."""
    signals: list[EdgeSignal] = field(default_factory=list)
    intents: list[Intent] = field(default_factory=list)
    live: list[Intent] = field(default_factory=list)
    """Live Activity intents published (and confirmed) by this absorb; not in ``intents``."""


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        redis: Redis,
        *,
        engine: EdgeEngine | None = None,
        catalog: CatalogFile | None = None,
    ) -> None:
        keys = Keys(settings.namespace)
        self.queue = keys.intent_queue
        self.bus = bus
        self.live = LiveState(redis, keys, retention_s=settings.live_state_retention_s)
        self.dedup = EventDedup(redis, keys, ttl_s=settings.event_dedup_ttl_s)
        self.differ = GameDiffer()
        self.engine = engine
        # The alert rules of GOALHORN_RULES_FILE (or the packaged default), reloaded when it is edited.
        self.catalog = catalog if catalog is not None else CatalogFile(settings.rules_file)
        self._wp_params_path = settings.wp_params_path
        self._win: WinFacts | None = None
        self.pacing = (
            LivePacing(
                redis,
                keys,
                high_per_hour=settings.live_activity_high_per_hour,
                tick_s=settings.live_activity_tick_s,
                retention_s=settings.live_state_retention_s,
            )
            if settings.live_activities
            else None
        )
        self._dismiss_s = settings.live_activity_dismiss_s
        self._live_unsent: dict[tuple[str, str], list[GameEvent]] = {}
        """Events of games whose Live Activity update was not published: they go with the game's next one."""

    def win_facts(self) -> WinFacts:
        """The win-probability facts of rule conditions; the model is loaded the first time a rule needs it."""
        if self._win is None:
            path = Path(self._wp_params_path) if self._wp_params_path else None
            self._win = WinFacts(self.engine.model if self.engine is not None else WinModel(ParamTable.load(path)))
        return self._win

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.catalog.current().rules

    async def absorb(self, parsed: Parsed, *, diff: bool, now: datetime | None = None) -> Absorbed:
        """Take in one adapter result; ``diff`` for polled feeds, whose events come from the differ.

        Raises what stopped an event's intents from being built or published (``BusError`` for the
        bus), after keeping what did succeed; the events it stopped come again on the next poll.
        """
        out = Absorbed()
        moment = now or utcnow()
        changes: list[Change] = []
        if diff:
            changes = [self.differ.diff(s, parsed.incidents.get(s.game_id, ())) for s in parsed.states]
        events = [*parsed.events, *(event for change in changes for event in change.events)]
        claims = await self.dedup.claim(events)
        out.duplicates, out.held = len(claims.done), len(claims.held)
        try:
            failure = await self._publish_events(claims.claimed, moment, out)
            await self.dedup.mark_done(out.events)
        finally:
            self.dedup.release(claims.claimed)
        published = {event.event_id for event in out.events}
        blocked = _games([e for e in claims.claimed if e.event_id not in published] + claims.held)
        for change in changes:
            if change.key not in blocked:
                self.differ.commit(change)
        states = [s for s in parsed.states if (s.source, s.game_id) not in blocked]
        out.states_written = await self.live.write(states)
        if self.pacing is not None:
            games = {(state.source, state.game_id) for state in states}
            mine = [event for event in events if (event.source, event.game_id) in games]
            if failure is None:
                failure = await self._publish_live(self.pacing, states, mine, moment, out)
            else:
                self._stash(mine)
        if failure is not None:
            raise failure
        if self.engine is not None:
            for state in parsed.states:
                out.signals += self.engine.on_state(state, moment)
            for book in parsed.books:
                out.signals += self.engine.on_book(book, moment)
        for signal in out.signals:
            game = self._state_of(signal)
            if game is not None:
                for intent in edge_intents(signal, game, self.rules, moment):
                    await self._publish(intent)
                    out.intents.append(intent)
            if self.engine is not None:
                self.engine.sent(signal)
        return out

    async def _publish_events(self, events: Sequence[GameEvent], moment: datetime, out: Absorbed) -> Exception | None:
        """Publish the intents of ``events`` in order, adding each event whose intents were all confirmed
        (and those intents) to ``out``; returns what failed, if anything. An event whose rules cannot be
        built is skipped (logged); a failed publish stops the rest, as the bus is unlikely to take them."""
        failure: Exception | None = None
        rules = self.rules
        win = self.win_facts() if events and need_win_facts(rules) else None
        follow = any(rule.to_original_recipients for rule in rules)
        for event in events:
            originals: list[Original] = []
            try:
                facts = win(event) if win is not None else None
                intents = intents_for(event, rules, moment, facts)
                if follow and event.kind is EventKind.SCORE_CORRECTION and event.team_id:
                    kept = await self.live.alerts(f"{event.source}:{event.game_id}", event.team_id)
                    originals = kept[-1] if kept else []
                    intents += corrections_for(event, rules, originals, moment, facts)
            except Exception as exc:
                log.exception("building the intents of %s failed", event.event_id)
                failure = failure or exc
                continue
            try:
                for intent in intents:
                    await self._publish(intent)
            except Exception as exc:  # a build failure before it was logged already
                return exc
            out.events.append(event)
            out.intents += intents
            await self._remember(event, intents, originals)
        return failure

    async def _publish_live(
        self,
        pacing: LivePacing,
        states: Sequence[GameState],
        events: Sequence[GameEvent],
        moment: datetime,
        out: Absorbed,
    ) -> Exception | None:
        """Publish the Live Activity intent of each state pacing claims; returns what failed, if anything.
        A claim whose intent was not built or published is put back and its events go with the game's
        next update; a failed claim or publish stops the rest (their events wait likewise), as Redis or
        the bus is unlikely to take them, while an intent that cannot be built holds back only its game."""
        ordered = sorted(states, key=lambda s: s.observed_at)
        of_state: dict[int, list[GameEvent]] = {}
        for event in events:  # to the first state of its game that saw it, else the game's last one
            mine = [i for i, s in enumerate(ordered) if (s.source, s.game_id) == (event.source, event.game_id)]
            seen = [i for i in mine if ordered[i].observed_at >= event.observed_at]
            if mine:
                of_state.setdefault(seen[0] if seen else mine[-1], []).append(event)
        failure: Exception | None = None
        for index, state in enumerate(ordered):
            game_events = self._live_unsent.pop((state.source, state.game_id), []) + of_state.get(index, [])
            rest = [*game_events, *(e for later in range(index + 1, len(ordered)) for e in of_state.get(later, []))]
            try:
                claim = await pacing.claim(state, game_events, moment)
            except Exception as exc:
                self._stash(rest)
                return exc
            if claim is None:
                continue
            try:
                intent = live_intent(
                    state,
                    game_events,
                    live_event=claim.live_event,
                    priority=claim.priority,
                    last_event=claim.last_event,
                    now=moment,
                    dismiss_s=self._dismiss_s,
                )
            except Exception as exc:
                log.exception("the Live Activity update of %s:%s could not be built", state.source, state.game_id)
                self._stash(game_events)
                await pacing.release(claim)
                failure = failure or exc
                continue
            try:
                await self._publish(intent)
            except BaseException as exc:
                # Put the claim back also when the poll is cancelled (the stage stopping) before the
                # broker confirmed: left recorded, the state would count as published, and a start or
                # an end would never go out. Shielded, so the stop cannot cut the release short.
                self._stash(rest)
                await asyncio.shield(pacing.release(claim))
                if isinstance(exc, Exception):
                    return exc
                raise
            out.live.append(intent)
            try:  # no longer pending: else, taken for lost after live_pacing.PENDING_S, it would go out again
                await pacing.confirm(claim)
            except Exception:
                log.exception("Live Activity update %s went out; its claim could not be confirmed", intent.intent_id)
        return failure

    def _stash(self, events: Sequence[GameEvent]) -> None:
        for event in events:
            kept = self._live_unsent.setdefault((event.source, event.game_id), [])
            kept.append(event)
            del kept[:-UNSENT_KEPT]

    async def _remember(self, event: GameEvent, intents: list[Intent], corrected: list[Original]) -> None:
        """Keep a score's alerts for a correction to follow; forget those a correction took back. A
        failure is logged: the alerts went out, only a later correction could not find them."""
        if event.team_id is None:
            return
        key = f"{event.source}:{event.game_id}"
        try:
            if corrected:
                await self.live.pop_alerts(key, event.team_id)
            elif event.kind in SCORING_KINDS and intents:
                await self.live.push_alerts(key, event.team_id, originals_of(intents))
        except Exception:
            log.exception("could not record the alerts of %s for corrections", event.event_id)

    async def _publish(self, intent: Intent) -> None:
        await self.bus.publish(self.queue, intent.to_json(), priority=intent.priority, message_id=intent.intent_id)

    def _state_of(self, signal: EdgeSignal) -> GameState | None:
        return self.engine.state(signal.game_id) if self.engine is not None else None


def _games(events: Sequence[GameEvent]) -> set[tuple[str, str]]:
    return {(event.source, event.game_id) for event in events}
