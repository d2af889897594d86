"""The segmenter stage's consumer: intents off the bus, batches onto the delivery queues.

The intent is acked only after its last batch was enqueued; if expansion fails half way, the intent
is redelivered and expanded again, and the delivery markers keep devices already sent from a
second copy.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from goalhorn.bus import BusMessage
from goalhorn.counters import PipelineCounters
from goalhorn.errors import ConfigError
from goalhorn.models import EncodedBatch, Intent, utcnow
from goalhorn.segmenter.expander import Expander, ExpansionStats

log = logging.getLogger(__name__)

EnqueueBatch = Callable[[EncodedBatch], Awaitable[None]]


class IntentConsumer:
    """A bus handler expanding each intent into delivery batches."""

    def __init__(self, expander: Expander, enqueue: EnqueueBatch, counters: PipelineCounters) -> None:
        self._expander = expander
        self._enqueue = enqueue
        self._counters = counters
        self._traces = counters.traces()

    async def __call__(self, message: BusMessage) -> None:
        try:
            intent = Intent.from_json(message.body)
        except ValidationError as exc:
            log.error("dropping unreadable intent %s: %s", message.message_id, exc.errors()[:3])
            await self._counters.add({"intents_done": 1, "intents_rejected": 1})
            return
        if intent.expired():
            head = {"event_id": intent.event_id, "kind": str(intent.kind), "expand_done_at": utcnow().isoformat()}
            await self._traces.expanded(intent.intent_id, intent.event_id, head, {"expired": 1})
            await self._counters.add({"intents_done": 1, "intents_expired": 1})
            return
        stats = ExpansionStats()
        started = utcnow()
        try:
            segments = self._expander.segments_of(intent)
        except ConfigError as exc:
            log.error("dropping intent %s: %s", intent.intent_id, exc)
            await self._counters.add({"intents_done": 1, "intents_rejected": 1})
            return
        queued: Counter[str] = Counter()
        async for batch in self._expander.expand(intent, stats, segments=segments):
            await self._enqueue(batch)
            await self._counters.add({"batches_published": 1})
            queued[f"batches:{batch.platform}"] += 1
            queued[f"devices:{batch.platform}"] += batch.size
        done = utcnow()
        await self._counters.add_stage_latencies(
            {
                "ingest": (intent.created_at - intent.event_at).total_seconds() * 1000,
                "fanout": (done - intent.created_at).total_seconds() * 1000,
            }
        )
        await self._traces.expanded(
            intent.intent_id,
            intent.event_id,
            {
                "event_id": intent.event_id,
                "kind": str(intent.kind),
                "priority": str(intent.priority),
                "event_at": intent.event_at.isoformat(),
                "created_at": intent.created_at.isoformat(),
                "expand_started_at": started.isoformat(),
                "expand_done_at": done.isoformat(),
            },
            {
                "recipients": stats.devices,
                "followers": stats.users,
                "followers_without_devices": stats.users_without_devices,
                **{f"suppressed:{reason}": n for reason, n in stats.suppressed.items()},
                **queued,
            },
        )
        await self._counters.add(
            {
                "intents_done": 1,
                "recipients": stats.devices,
                "followers": stats.users,
                "followers_without_devices": stats.users_without_devices,
                "invalid_device_records": stats.invalid_devices,
                "invalid_preference_records": stats.invalid_preferences,
                "intents_redelivered": int(message.redelivered),
                **{f"suppressed:{reason}": n for reason, n in stats.suppressed.items()},
            }
        )
