"""The subscriber epoch as the fanout sees it, on both backends: what a fresh process does without one,
what it does when another process found the data lost, and an intent counted done once however often
it is delivered."""

from __future__ import annotations

import pytest

from goalhorn.admin.subscribers import declare_restored
from goalhorn.bus import BusMessage, Requeue
from goalhorn.catalog import default_catalog
from goalhorn.counters import PipelineCounters
from goalhorn.keys import Keys
from goalhorn.models import Device, EncodedBatch
from goalhorn.preferences.epoch import SubscriberEpoch
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis
from goalhorn.segmenter.consumer import IntentConsumer
from goalhorn.segmenter.epoch_watch import SubscriberDataLost
from goalhorn.segmenter.expander import Expander
from goalhorn.settings import Settings
from tests.conftest import delete_namespace
from tests.support.builders import make_intent


def consumer_of(redis: Redis, settings: Settings, batches: list[EncodedBatch]) -> IntentConsumer:
    keys = Keys(settings.namespace)

    async def enqueue(batch: EncodedBatch) -> None:
        batches.append(batch)

    expander = Expander(redis, keys, default_catalog)
    counters = PipelineCounters(redis, keys)
    return IntentConsumer(expander, enqueue, counters, redis=redis, keys=keys, buckets=settings.preference_buckets)


def message(intent_id: str, *, redelivered: bool = False) -> BusMessage:
    intent = make_intent(intent_id).model_copy(update={"segments": ("scoring_team_followers",)})
    return BusMessage(intent.to_json(), 9, intent_id, redelivered)


async def follower(redis: Redis, settings: Settings) -> None:
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    await store.add_devices([Device(device_id="d1", user_id="u1", platform="fcm", address="tok")])
    await store.follow_teams([("u1", "t1")])


async def counts(redis: Redis, settings: Settings) -> tuple[int, int]:
    snapshot = await PipelineCounters(redis, Keys(settings.namespace)).snapshot()
    return snapshot.get("intents_done"), snapshot.get("recipients")


async def test_a_fresh_process_on_an_empty_namespace_reaches_nobody_and_adopts_the_first_epoch(
    redis: Redis, settings: Settings
) -> None:
    batches: list[EncodedBatch] = []
    consumer = consumer_of(redis, settings, batches)
    await consumer(message("i1"))
    assert (batches, await counts(redis, settings)) == ([], (1, 0))
    assert consumer.watch.seen is None
    assert consumer.watch.alarm is None
    await follower(redis, settings)  # the first subscriber brings the epoch
    await consumer(message("i2"))
    assert len(batches) == 1
    assert consumer.watch.seen == await SubscriberEpoch(redis, Keys(settings.namespace)).read()


async def test_data_written_without_an_epoch_gets_one_and_its_loss_is_then_caught(
    redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.namespace)
    await follower(redis, settings)
    await redis.delete(keys.subscriber_epoch())  # as data written before epochs existed
    batches: list[EncodedBatch] = []
    consumer = consumer_of(redis, settings, batches)
    await consumer(message("i1"))
    assert len(batches) == 1
    adopted = await SubscriberEpoch(redis, keys).read()
    assert adopted is not None
    assert consumer.watch.seen == adopted
    await delete_namespace(redis, settings.namespace)  # Redis restarted empty
    with pytest.raises(SubscriberDataLost):
        await consumer.watch.check()
    lost = await SubscriberEpoch(redis, keys).read()
    assert lost is not None
    assert lost.lost


async def test_a_process_started_after_the_loss_was_found_holds_until_it_is_declared_restored(
    redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.namespace)
    await follower(redis, settings)
    first = consumer_of(redis, settings, [])
    await first.watch.check()
    await redis.delete(keys.subscriber_epoch())
    with pytest.raises(SubscriberDataLost):
        await first.watch.check()
    await follower(redis, settings)  # writes after the loss do not clear it
    fresh = consumer_of(redis, settings, [])
    with pytest.raises(SubscriberDataLost):
        await fresh.watch.check()
    assert fresh.watch.alarm is not None
    await declare_restored(redis, settings)
    for consumer in (first, fresh):
        restored = await consumer.watch.check()
        assert restored is not None
        assert restored.restored
        assert consumer.watch.alarm is None


async def test_an_intent_delivered_again_is_counted_done_once(redis: Redis, settings: Settings) -> None:
    await follower(redis, settings)
    batches: list[EncodedBatch] = []
    consumer = consumer_of(redis, settings, batches)
    await consumer(message("i1"))
    await consumer(message("i1", redelivered=True))  # its ack was lost: expanded again, not counted again
    assert len(batches) == 2
    assert await counts(redis, settings) == (1, 1)


async def test_an_intent_that_failed_goes_back_to_the_queue_uncounted_and_counts_when_it_succeeds(
    redis: Redis, settings: Settings
) -> None:
    await follower(redis, settings)
    keys = Keys(settings.namespace)
    failures = [RuntimeError("the delivery queue refused it")]

    async def enqueue(batch: EncodedBatch) -> None:
        if failures:
            raise failures.pop()

    consumer = IntentConsumer(
        Expander(redis, keys, default_catalog),
        enqueue,
        PipelineCounters(redis, keys),
        redis=redis,
        keys=keys,
        buckets=settings.preference_buckets,
    )
    with pytest.raises(Requeue):
        await consumer(message("i1"))
    assert await counts(redis, settings) == (0, 0)
    await consumer(message("i1", redelivered=True))
    assert await counts(redis, settings) == (1, 1)
