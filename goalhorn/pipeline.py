"""The whole pipeline in one process: feed in, pushes out.

ingest (adapter -> Ingestor: live state, differ, dedup, rules) -> intent bus -> segmenter consumer -> delivery queues ->
dramatiq worker -> providers. Each stage can also run in its own process (``goalhorn worker``);
this composition is what the demo and the end-to-end tests use, on either backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from goalhorn.counters import CounterSnapshot, PipelineCounters
from goalhorn.dispatch.stage import DeliveryStage, DeliveryWorker, ProviderFactory, make_broker
from goalhorn.errors import GoalhornError
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.espn import EspnAdapter
from goalhorn.ingest.ingestor import Ingestor
from goalhorn.intents.bus import Bus, Subscription, make_bus
from goalhorn.intents.catalog import CatalogFile
from goalhorn.keys import Keys
from goalhorn.models import GameEvent, Sport, utcnow
from goalhorn.redis_client import Redis, make_redis
from goalhorn.segmenter.consumer import IntentConsumer
from goalhorn.segmenter.expander import Expander
from goalhorn.settings import Settings

log = logging.getLogger(__name__)


class PipelineTimeout(GoalhornError):
    """The pipeline did not drain in time."""


class Pipeline:
    """Every stage of goalhorn wired together over the configured backends."""

    def __init__(self, settings: Settings, providers: ProviderFactory):
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self._providers = providers
        self.catalog = CatalogFile(settings.rules_file)
        self.redis: Redis = make_redis(settings)
        self.counters = PipelineCounters(self.redis, self.keys)
        self.bus: Bus = make_bus(settings)
        self.ingestor = Ingestor(settings, self.bus, self.redis, catalog=self.catalog)
        self._espn = EspnAdapter()
        self.stage = DeliveryStage(settings, make_broker(settings), providers)
        self._worker = DeliveryWorker(self.stage)
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        await self.bus.start([self.keys.intent_queue])
        self._worker.start()
        consumer = IntentConsumer(
            Expander(
                self.redis,
                self.keys,
                self.catalog.current,
                chunk=self.settings.expand_chunk,
                batch_size=self.settings.batch_size,
                buckets=self.settings.preference_buckets,
                bloom=self.settings.bloom_enabled,
                bloom_error_rate=self.settings.bloom_error_rate,
                bloom_rebuild_pending=self.settings.bloom_rebuild_pending,
            ),
            self.stage.enqueue,
            self.counters,
        )
        self._subscription = await self.bus.consume(
            self.keys.intent_queue, consumer, prefetch=self.settings.intent_prefetch
        )

    async def ingest_scoreboard(
        self, body: bytes, *, sport: Sport | None = None, league: str | None = None
    ) -> list[GameEvent]:
        """Parse one ESPN scoreboard, turn its changes into events and publish their intents."""
        adapter = self._espn if sport is None and league is None else EspnAdapter(sport=sport, league=league)
        return await self._absorb(adapter.feed(body, received_at=utcnow()), diff=True)

    async def publish_events(self, events: Sequence[GameEvent]) -> list[GameEvent]:
        """Publish the intents of every event not seen before (e.g. from a push feed); returns those."""
        return await self._absorb(Parsed(events=list(events)), diff=False)

    async def _absorb(self, parsed: Parsed, *, diff: bool) -> list[GameEvent]:
        absorbed = await self.ingestor.absorb(parsed, diff=diff)
        await self.counters.add(
            {
                "events": len(absorbed.events),
                "events_duplicate": absorbed.duplicates,
                "intents": len(absorbed.intents),
                "feed_rejected": len(parsed.rejected),
            }
        )
        return absorbed.events

    async def wait_idle(self, timeout_s: float = 60.0, poll_s: float = 0.05) -> CounterSnapshot:
        """Wait until every intent was expanded and every batch finished (twice in a row)."""
        deadline = time.monotonic() + timeout_s
        calm = 0
        while True:
            snap = await self.counters.snapshot()
            idle = (
                snap.get("intents_done") >= snap.get("intents")
                and snap.get("batches_done") >= snap.get("batches_published")
                and await self.bus.depth(self.keys.intent_queue) == 0
            )
            calm = calm + 1 if idle else 0
            if calm >= 2:
                return snap
            if time.monotonic() > deadline:
                intents = f"{snap.get('intents_done')}/{snap.get('intents')}"
                batches = f"{snap.get('batches_done')}/{snap.get('batches_published')}"
                raise PipelineTimeout(f"not idle after {timeout_s:.0f}s: intents {intents}, batches {batches}")
            await asyncio.sleep(poll_s)

    async def aclose(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()
        await asyncio.to_thread(self._worker.stop)
        self.stage.close()
        self.stage.broker.close()
        self.catalog.release()
        await self.bus.aclose()
        await self.redis.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
