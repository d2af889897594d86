"""The ingest stage: what adapters parse becomes live state, deduplicated events and intents.

``Ingestor.absorb`` takes one adapter result and, in order: writes the game states to live state,
turns them into events (by diffing consecutive states for polled feeds; push feeds bring their
own), re-evaluates the edge engine with every state and book update, and publishes — the intents
of every event not seen before (alert rules) and an edge intent for every signal — on the bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from goalhorn.bus import Bus
from goalhorn.catalog import CatalogFile
from goalhorn.catalog.rules import Rule
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.dedup import EventDedup
from goalhorn.ingest.events import GameDiffer
from goalhorn.ingest.fusion import EdgeEngine
from goalhorn.ingest.live import LiveState
from goalhorn.intents.edge import edge_intents
from goalhorn.intents.rules import intents_for
from goalhorn.keys import Keys
from goalhorn.models import EdgeSignal, GameEvent, GameState, Intent, utcnow
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings


@dataclass(slots=True)
class Absorbed:
    """What one ``absorb`` did."""

    states_written: int = 0
    events: list[GameEvent] = field(default_factory=list)
    duplicates: int = 0
    """Events dropped because their id was seen before."""
    signals: list[EdgeSignal] = field(default_factory=list)
    intents: list[Intent] = field(default_factory=list)


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

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.catalog.current().rules

    async def absorb(self, parsed: Parsed, *, diff: bool, now: datetime | None = None) -> Absorbed:
        """Take in one adapter result; ``diff`` for polled feeds, whose events come from the differ."""
        out = Absorbed()
        out.states_written = await self.live.write(parsed.states)
        events = list(parsed.events)
        if diff:
            for state in parsed.states:
                events += self.differ.update(state, parsed.incidents.get(state.game_id, ()))
        out.events = await self.dedup.first_seen(events)
        out.duplicates = len(events) - len(out.events)
        moment = now or utcnow()
        if self.engine is not None:
            for state in parsed.states:
                out.signals += self.engine.on_state(state, moment)
            for book in parsed.books:
                out.signals += self.engine.on_book(book, moment)
        for event in out.events:
            out.intents += intents_for(event, self.rules, moment)
        for signal in out.signals:
            game = self._state_of(signal)
            if game is not None:
                out.intents += edge_intents(signal, game, self.rules, moment)
        for intent in out.intents:
            await self.bus.publish(self.queue, intent.to_json(), priority=intent.priority, message_id=intent.intent_id)
        return out

    def _state_of(self, signal: EdgeSignal) -> GameState | None:
        return self.engine.state(signal.game_id) if self.engine is not None else None
