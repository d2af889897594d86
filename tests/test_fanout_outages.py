"""The fanout against a Redis that really stops and comes back empty (a redis-server of the test's own,
without persistence), with intents on the real RabbitMQ: no intent is acked while Redis is down or
after it came back empty, intents are held rather than spun through the queue, the loss raises the
alarm, and the held intents reach everyone once the subscribers are restored and that is declared."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from goalhorn.admin.subscribers import declare_restored
from goalhorn.app.fanout import FanoutStage
from goalhorn.app.parts import Parts
from goalhorn.bus import Bus, BusMessage
from goalhorn.bus.rabbitmq import RabbitBus
from goalhorn.catalog import default_catalog
from goalhorn.counters import PipelineCounters
from goalhorn.keys import Keys
from goalhorn.models import Device, EncodedBatch
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis, make_redis
from goalhorn.segmenter.consumer import IntentConsumer
from goalhorn.segmenter.expander import Expander
from goalhorn.segmenter.hold import IntentGate
from goalhorn.settings import Settings
from tests.conftest import make_settings
from tests.support.builders import make_intent
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.real, pytest.mark.timeout(90)]

USERS = 600


async def load_audience(redis: Redis, settings: Settings) -> None:
    """USERS followers of team t1 with one FCM device each, written as the API and the import do."""
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    users = [f"u{n:04d}" for n in range(USERS)]
    await store.add_devices(Device(device_id=f"{u}-d", user_id=u, platform="fcm", address=f"tok-{u}") for u in users)
    await store.follow_teams((u, "t1") for u in users)


def data_lost(settings: Settings) -> float | None:
    return REGISTRY.get_sample_value("goalhorn_redis_data_lost", {"namespace": settings.namespace})


@dataclass
class Fanout:
    """An intent consumer on the real bus, recording what it enqueued and every delivery it was handed."""

    consumer: IntentConsumer
    counters: PipelineCounters
    batches: list[EncodedBatch] = field(default_factory=list)
    deliveries: Counter[str] = field(default_factory=Counter)
    redeliveries: int = 0
    done: Counter[str] = field(default_factory=Counter)

    def devices_of(self, intent_id: str) -> Counter[str]:
        return Counter(
            d.device_id for b in self.batches if b.batch_id.startswith(f"{intent_id}.") for d in b.decode().devices
        )


@asynccontextmanager
async def running_fanout(
    settings: Settings, redis: Redis, on_batch: Callable[[int], object] | None = None, *, prefetch: int = 4
) -> AsyncIterator[tuple[Fanout, RabbitBus]]:
    keys = Keys(settings.namespace)
    counters = PipelineCounters(redis, keys)
    fanout: Fanout

    async def enqueue(batch: EncodedBatch) -> None:
        fanout.batches.append(batch)
        if on_batch is not None:
            await asyncio.to_thread(on_batch, len(fanout.batches))

    expander = Expander(redis, keys, default_catalog, chunk=50, batch_size=50)
    consumer = IntentConsumer(expander, enqueue, counters, redis=redis, keys=keys, buckets=settings.preference_buckets)
    consumer.gate = IntentGate(consumer.probe, base_s=0.1, cap_s=0.5)
    fanout = Fanout(consumer, counters)

    async def handler(message: BusMessage) -> None:
        fanout.deliveries[message.message_id] += 1
        fanout.redeliveries += message.redelivered
        await consumer(message)
        fanout.done[message.message_id] += 1

    bus = RabbitBus(settings)
    await bus.start([keys.intent_queue])
    subscription = await bus.consume(keys.intent_queue, handler, prefetch=prefetch)
    try:
        yield fanout, bus
    finally:
        await consumer.close()
        await subscription.cancel()
        await bus.aclose()


async def publish(bus: Bus, settings: Settings, *intent_ids: str) -> None:
    for intent_id in intent_ids:
        intent = make_intent(intent_id).model_copy(update={"segments": ("scoring_team_followers",)})
        await bus.publish(Keys(settings.namespace).intent_queue, intent.to_json(), priority=9, message_id=intent_id)


async def until(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_redis_restarted_empty_mid_expansion_holds_the_intent_until_the_subscribers_are_restored() -> None:
    with RedisServer() as server:
        settings = make_settings("real").model_copy(update={"redis_url": server.url})
        redis = make_redis(settings)
        try:
            await load_audience(redis, settings)

            def restart_at_the_third_batch(count: int) -> None:
                if count == 3:
                    server.restart()

            async with running_fanout(settings, redis, restart_at_the_third_batch) as (fanout, bus):
                await publish(bus, settings, "goal-1")
                await until(lambda: fanout.consumer.watch.alarm is not None)
                assert data_lost(settings) == 1
                assert not fanout.consumer.gate.is_open
                await asyncio.sleep(1.0)
                assert fanout.done == Counter()  # not acked: held
                assert sum(fanout.deliveries.values()) == 1  # held in its handler, not spun through the queue
                partial = fanout.devices_of("goal-1")
                assert 0 < len(partial) < USERS

                await load_audience(redis, settings)  # the subscribers are re-imported...
                await asyncio.sleep(1.0)
                assert fanout.done == Counter()  # ...which alone does not clear the alarm
                await declare_restored(redis, settings)  # `goalhorn subscribers restored`
                await until(lambda: fanout.done["goal-1"] == 1)

            assert fanout.consumer.watch.alarm is None
            assert data_lost(settings) == 0
            devices = fanout.devices_of("goal-1")
            assert set(devices) == {f"u{n:04d}-d" for n in range(USERS)}  # everyone, once restored
            # The devices batched before the restart are batched again: their delivery markers were lost too.
            assert sum(devices.values()) == USERS + sum(partial.values())
            assert (await fanout.counters.snapshot()).get("intents_done") == 1
        finally:
            await redis.aclose()


async def test_intents_are_held_not_spun_while_redis_is_down_and_not_acked_when_it_returns_empty() -> None:
    with RedisServer() as server:
        settings = make_settings("real").model_copy(update={"redis_url": server.url})
        redis = make_redis(settings)
        try:
            await load_audience(redis, settings)
            async with running_fanout(settings, redis, prefetch=4) as (fanout, bus):
                await publish(bus, settings, "warm-up")
                await until(lambda: fanout.done["warm-up"] == 1)
                server.stop()
                ids = [f"goal-{n}" for n in range(10)]
                await publish(bus, settings, *ids)
                await asyncio.sleep(3.0)
                # At most the prefetch window is handed over, and each is held, not requeued and redelivered.
                assert sum(fanout.deliveries[i] for i in ids) <= 4
                assert fanout.redeliveries == 0
                assert not fanout.consumer.gate.is_open
                assert fanout.done == Counter({"warm-up": 1})

                server.start()  # back, empty
                await until(lambda: fanout.consumer.watch.alarm is not None)
                assert data_lost(settings) == 1
                await asyncio.sleep(1.0)
                assert fanout.done == Counter({"warm-up": 1})
                assert {b.batch_id.split(".")[0] for b in fanout.batches} == {"warm-up"}  # nothing expanded yet

                # This loader's pooled connections predate the restart: one may be reset on its first
                # write (the fanout copes with that itself; a loader of the test need not).
                await redis.connection_pool.disconnect()
                await load_audience(redis, settings)
                await declare_restored(redis, settings)
                await until(lambda: all(fanout.done[i] == 1 for i in ids))
            for intent_id in ids:
                assert set(fanout.devices_of(intent_id)) == {f"u{n:04d}-d" for n in range(USERS)}
            assert (await fanout.counters.snapshot()).get("intents_done") == 10  # the warm-up was counted before
            assert sum(fanout.deliveries[i] for i in ids) <= 10 + 4
        finally:
            await redis.aclose()


async def test_a_stopping_fanout_requeues_the_intents_it_holds_at_once() -> None:
    with RedisServer() as server:
        settings = make_settings("real").model_copy(update={"redis_url": server.url})
        parts = Parts.build(settings)
        stage = FanoutStage(parts)
        try:
            await stage.start()
            server.stop()
            await publish(parts.bus, settings, "goal-1", "goal-2", "goal-3")
            await until(lambda: stage.consumer.gate.holding == 3)
            assert any("fanout holds 3 intents" in alarm for alarm in stage.alarms())
            async with asyncio.timeout(5):  # not the 60 s an intent may wait at the gate
                await stage.stop()
            assert await parts.bus.depth(Keys(settings.namespace).intent_queue) == 3  # back in the queue
        finally:
            await parts.aclose()
