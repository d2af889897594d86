"""The fanout stage: intents off the bus, expanded into delivery batches on the provider queues.

``goalhorn run fanout`` runs it (as many as the intent load needs; RabbitMQ spreads intents over them).
An intent is acked only after its last batch was confirmed by the broker, so a fanout process killed
mid-intent leaves it to be expanded again elsewhere (the delivery markers drop the repeats). While
Redis is unreachable or has lost the subscriber data, intents are held unacked, not expanded to
nobody (``goalhorn.segmenter.hold``, ``goalhorn.segmenter.epoch_watch``); ``/readyz`` says why. On
stop the consumer takes no new intent, requeues those it holds and waits for those being expanded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from goalhorn.app.parts import Parts
from goalhorn.bus import Subscription
from goalhorn.catalog import Catalog
from goalhorn.keys import Keys
from goalhorn.redis_client import Redis
from goalhorn.segmenter.consumer import IntentConsumer
from goalhorn.segmenter.expander import Expander
from goalhorn.segmenter.hold import describe
from goalhorn.settings import Settings
from goalhorn.topics.state import topic_planner

log = logging.getLogger(__name__)

NAME = "fanout"
WATCH_INTERVAL_S = 5.0
"""How often an idle fanout process checks the subscriber epoch, so a loss is reported before an intent meets it."""


def make_expander(settings: Settings, redis: Redis, catalog: Callable[[], Catalog]) -> Expander:
    """The expander ``settings`` describe, reading segments from ``catalog()`` (also what
    ``goalhorn segments preview`` runs, so a preview reaches who fanout would)."""
    return Expander(
        redis,
        Keys(settings.namespace),
        catalog,
        chunk=settings.expand_chunk,
        batch_size=settings.batch_size,
        buckets=settings.preference_buckets,
        bloom=settings.bloom_enabled,
        bloom_error_rate=settings.bloom_error_rate,
        bloom_rebuild_pending=settings.bloom_rebuild_pending,
        topics=topic_planner(settings, redis),
    )


class FanoutStage:
    name = NAME

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        expander = make_expander(parts.settings, parts.redis, parts.catalog.current)
        self.consumer = IntentConsumer(
            expander,
            parts.delivery.enqueue,
            parts.counters,
            redis=parts.redis,
            keys=parts.keys,
            buckets=parts.settings.preference_buckets,
        )
        self._subscription: Subscription | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        queue = self.parts.keys.intent_queue
        await self.parts.bus.start([queue])
        self._subscription = await self.parts.bus.consume(
            queue, self.consumer, prefetch=self.parts.settings.intent_prefetch
        )
        self._watcher = asyncio.create_task(self._watch())

    def ready(self) -> bool:
        return self._subscription is not None

    def alarms(self) -> list[str]:
        """Why intents are not being expanded, for ``/readyz``."""
        out = []
        if self.consumer.watch.alarm is not None:
            out.append(f"Redis lost the subscriber data ({self.consumer.watch.alarm}); intents are held")
        gate = self.consumer.gate
        if not gate.is_open:
            out.append(f"fanout holds {gate.holding} intents: {gate.reason}")
        return out

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        # The subscription takes nothing new from its first step; meanwhile the held intents are let go
        # (requeued), so the cancel does not wait out their hold.
        cancelling = asyncio.create_task(subscription.cancel()) if subscription is not None else None
        await asyncio.sleep(0)
        await self.consumer.close()
        if cancelling is not None:
            await cancelling

    async def _watch(self) -> None:
        while True:
            try:
                await self.consumer.watch.check()
            except Exception as exc:  # reported by the watch (a loss) or by /readyz (Redis down)
                log.debug("subscriber epoch check failed: %s", describe(exc))
            await asyncio.sleep(WATCH_INTERVAL_S)


def build(settings: Settings, parts: Parts | None = None) -> FanoutStage:
    return FanoutStage(parts or Parts.build(settings))


async def serve(settings: Settings, stop: asyncio.Event, *, metrics_port: int | None = None) -> None:
    """Run the fanout stage alone until ``stop`` is set."""
    from goalhorn.app.process import serve_stages

    await serve_stages(settings, (NAME,), stop, metrics_port=metrics_port)
