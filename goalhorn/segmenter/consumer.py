"""The segmenter stage's consumer: intents off the bus, batches onto the delivery queues.

The intent is acked only after its last batch was enqueued and the subscriber data it was expanded
from is known to be whole (``epoch_watch``: checked before and after the expansion); if expansion fails
half way, the intent is expanded again, and the delivery markers keep devices already sent from a
second copy. An intent whose audience cannot be read (Redis unreachable, its data lost) is held
unacked while Redis is probed (``hold``); any other failure puts it back on the queue after a
jittered delay that grows with its failures, never at once. Each intent is counted done once, however
many times it is delivered (``Keys.intent_counted``).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from goalhorn.backoff import Backoff
from goalhorn.bus import BusMessage, Requeue
from goalhorn.counters import TRACE_TTL_S, PipelineCounters
from goalhorn.errors import ConfigError
from goalhorn.keys import Keys
from goalhorn.models import EncodedBatch, Intent, utcnow
from goalhorn.redis_client import Redis
from goalhorn.segmenter.epoch_watch import EpochWatch, SubscriberDataLost
from goalhorn.segmenter.expander import Expander, ExpansionStats, is_topic_batch
from goalhorn.segmenter.hold import IntentGate, describe

log = logging.getLogger(__name__)

EnqueueBatch = Callable[[EncodedBatch], Awaitable[None]]

AUDIENCE_UNREADABLE = (RedisConnectionError, RedisTimeoutError, SubscriberDataLost)
"""Failures that say nothing about the intent, only that its audience cannot be read now: hold it.
(redis-py raises its own ``ConnectionError`` for socket errors, and for a Redis still loading its
data; a broker that refuses a batch is a failure of the intent's own, retried after its delay.)"""
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
REMEMBERED_FAILURES = 10_000
"""Intents whose failures are remembered for their retry delay (the oldest are forgotten)."""


class IntentConsumer:
    """A bus handler expanding each intent into delivery batches."""

    def __init__(
        self,
        expander: Expander,
        enqueue: EnqueueBatch,
        counters: PipelineCounters,
        *,
        redis: Redis,
        keys: Keys,
        buckets: int,
        gate: IntentGate | None = None,
    ) -> None:
        self._expander = expander
        self._enqueue = enqueue
        self._counters = counters
        self._traces = counters.traces()
        self._redis = redis
        self._keys = keys
        self.watch = EpochWatch(redis, keys, buckets=buckets)
        self.gate = gate if gate is not None else IntentGate(self.probe)
        self._failures: OrderedDict[str, Backoff] = OrderedDict()

    async def probe(self) -> None:
        """Whether an intent could be expanded now: Redis answers and holds whole subscriber data.
        Idle connections are dropped first: after a restart each would fail once more, mid-expansion."""
        await self._redis.connection_pool.disconnect(inuse_connections=False)
        await self._redis.ping()
        await self.watch.check()

    async def close(self) -> None:
        """Requeue the intents held, at once (the process is stopping)."""
        await self.gate.close()

    async def __call__(self, message: BusMessage) -> None:
        while True:
            await self.gate.enter()
            try:
                await self._handle(message)
            except AUDIENCE_UNREADABLE as exc:
                self.gate.shut(describe(exc))
                continue  # held at the gate, expanded again once Redis is back whole
            except Exception as exc:
                backoff = self._failures.pop(message.message_id, None) or Backoff(RETRY_BASE_S, RETRY_CAP_S)
                self._failures[message.message_id] = backoff
                while len(self._failures) > REMEMBERED_FAILURES:
                    self._failures.popitem(last=False)
                delay = backoff.next_delay()
                log.exception(
                    "expanding intent %s failed (attempt %d); requeued in %.1fs",
                    message.message_id,
                    backoff.failures,
                    delay,
                )
                await self.gate.sleep(delay)
                raise Requeue(f"failed: {describe(exc)}") from exc
            self._failures.pop(message.message_id, None)
            return

    async def _count_once(self, intent_id: str, counts: Mapping[str, int]) -> None:
        """Add an intent's counts unless an earlier delivery of it was counted."""
        marker = self._keys.intent_counted(intent_id)
        if not await self._redis.set(marker, b"1", nx=True, ex=TRACE_TTL_S):
            log.info("intent %s was counted before; not counting it again", intent_id)
            return
        try:
            await self._counters.add(counts)
        except BaseException:
            try:
                await self._redis.delete(marker)  # so the next delivery counts it
            except Exception as exc:
                log.warning("intent %s: counts not added and its marker not removed (%s)", intent_id, describe(exc))
            raise

    async def _handle(self, message: BusMessage) -> None:
        try:
            intent = Intent.from_json(message.body)
        except ValidationError as exc:
            log.error("dropping unreadable intent %s: %s", message.message_id, exc.errors()[:3])
            await self._count_once(message.message_id, {"intents_done": 1, "intents_rejected": 1})
            return
        if intent.expired():
            head = {"event_id": intent.event_id, "kind": str(intent.kind), "expand_done_at": utcnow().isoformat()}
            await self._traces.expanded(intent.intent_id, intent.event_id, head, {"expired": 1})
            await self._count_once(intent.intent_id, {"intents_done": 1, "intents_expired": 1})
            return
        stats = ExpansionStats()
        started = utcnow()
        try:
            segments = self._expander.segments_of(intent)
        except ConfigError as exc:
            log.error("dropping intent %s: %s", intent.intent_id, exc)
            await self._count_once(intent.intent_id, {"intents_done": 1, "intents_rejected": 1})
            return
        epoch = await self.watch.check()
        queued: Counter[str] = Counter()
        async with aclosing(self._expander.expand(intent, stats, segments=segments)) as batches:
            async for batch in batches:
                await self._enqueue(batch)
                await self._counters.add({"batches_published": 1})
                if is_topic_batch(batch):  # one message FCM fans out to the topic's members
                    queued[f"topic_batches:{batch.platform}"] += 1
                else:
                    queued[f"batches:{batch.platform}"] += 1
                    queued[f"devices:{batch.platform}"] += batch.size
        if await self.watch.check() != epoch and epoch is not None:
            raise SubscriberDataLost(f"the subscriber epoch changed from {epoch} during the expansion")
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
                "topic_messages": stats.topic_messages,
                "topic_members": stats.topic_members,
                "live_broadcasts": stats.live_broadcasts,
                "live_starts_over_budget": stats.live_starts_over_budget,
                "live_starts_repeated": stats.live_starts_repeated,
                **{f"suppressed:{reason}": n for reason, n in stats.suppressed.items()},
                **queued,
            },
        )
        await self._count_once(
            intent.intent_id,
            {
                "intents_done": 1,
                "recipients": stats.devices,
                "followers": stats.users,
                "followers_without_devices": stats.users_without_devices,
                "invalid_device_records": stats.invalid_devices,
                "invalid_preference_records": stats.invalid_preferences,
                "intents_redelivered": int(message.redelivered),
                "topic_messages": stats.topic_messages,
                "topic_members": stats.topic_members,
                "live_broadcasts": stats.live_broadcasts,
                "live_starts_over_budget": stats.live_starts_over_budget,
                "live_starts_repeated": stats.live_starts_repeated,
                **{f"suppressed:{reason}": n for reason, n in stats.suppressed.items()},
            },
        )
