"""Every stage in one process: what the demo and the in-process tests run.

It is the sum of the stages ``goalhorn run ingest|fanout|deliver`` run as separate processes, built
over one :class:`Parts`: the same code, so the demo shows what a deployment does. Feeds are handed
in by the caller (``ingest_scoreboard``, ``publish_events``) instead of polled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from goalhorn.app.deliver import DeliverStage
from goalhorn.app.fanout import FanoutStage
from goalhorn.app.ingest import IngestStage
from goalhorn.app.parts import Parts
from goalhorn.counters import CounterSnapshot
from goalhorn.dispatch.stage import ProviderFactory
from goalhorn.errors import GoalhornError
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.espn import EspnAdapter
from goalhorn.models import GameEvent, Sport, utcnow
from goalhorn.settings import Settings


class PipelineTimeout(GoalhornError):
    """The pipeline did not drain in time."""


class Pipeline:
    """Every stage of goalhorn wired together over the configured backends."""

    def __init__(self, settings: Settings, providers: ProviderFactory | None = None) -> None:
        self.settings = settings
        self.parts = Parts.build(settings, providers)
        self.keys = self.parts.keys
        self.redis = self.parts.redis
        self.bus = self.parts.bus
        self.counters = self.parts.counters
        self.catalog = self.parts.catalog
        self.ingest = IngestStage(self.parts, feeds=False)
        self.fanout = FanoutStage(self.parts)
        self.deliver = DeliverStage(self.parts)
        self._espn = EspnAdapter()

    async def start(self) -> None:
        await self.deliver.start()
        await self.fanout.start()
        await self.ingest.start()

    async def ingest_scoreboard(
        self, body: bytes, *, sport: Sport | None = None, league: str | None = None
    ) -> list[GameEvent]:
        """Parse one ESPN scoreboard, turn its changes into events and publish their intents."""
        adapter = self._espn if sport is None and league is None else EspnAdapter(sport=sport, league=league)
        return (await self.ingest.absorb(adapter.feed(body, received_at=utcnow()), diff=True)).events

    async def publish_events(self, events: Sequence[GameEvent]) -> list[GameEvent]:
        """Publish the intents of every event not seen before (e.g. from a push feed); returns those."""
        return (await self.ingest.absorb(Parsed(events=list(events)), diff=False)).events

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
        await self.ingest.stop()
        await self.fanout.stop()
        await self.deliver.stop()
        await self.parts.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
