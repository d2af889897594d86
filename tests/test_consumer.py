"""The segmenter's bus handler: batches out at the intent's priority, bad intents counted, not fatal."""

from __future__ import annotations

from datetime import timedelta

from goalhorn.bus import BusMessage
from goalhorn.catalog import default_catalog
from goalhorn.counters import PipelineCounters
from goalhorn.keys import Keys
from goalhorn.models import DeliveryBatch, Device, EncodedBatch, EventKind, Intent, Sport, utcnow
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import Redis
from goalhorn.segmenter.consumer import IntentConsumer
from goalhorn.segmenter.expander import Expander
from goalhorn.settings import Settings


def intent(segments: tuple[str, ...]) -> Intent:
    now = utcnow()
    return Intent(
        intent_id="i1",
        event_id="e1",
        kind=EventKind.GOAL,
        sport=Sport.SOCCER,
        game_id="g1",
        team_id="t1",
        priority=9,
        segments=segments,
        template="goal",
        event_at=now,
        created_at=now,
        expires_at=now + timedelta(minutes=5),
    )


async def test_batches_are_enqueued_and_an_unknown_segment_is_counted_not_raised(
    redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.namespace)
    store = PreferenceStore(redis, keys)
    await store.add_devices(
        [Device(device_id=f"u{i}-a", user_id=f"u{i}", platform="fcm", address="tok") for i in range(5)]
    )
    await store.follow_teams([(f"u{i}", "t1") for i in range(4)])
    await store.watch_matches([("u3", "g1"), ("u4", "g1")])
    await store.mute_team("u0", "t1")
    counters = PipelineCounters(redis, keys)
    enqueued: list[DeliveryBatch] = []

    async def enqueue(batch: EncodedBatch) -> None:
        enqueued.append(batch.decode())

    expander = Expander(redis, keys, default_catalog, batch_size=2)
    consumer = IntentConsumer(expander, enqueue, counters, redis=redis, keys=keys, buckets=settings.preference_buckets)
    good = intent(("scoring_team_followers", "match_watchers"))
    await consumer(BusMessage(body=good.to_json(), priority=9, message_id="i1", redelivered=False))
    assert sorted(d.device_id for b in enqueued for d in b.devices) == ["u1-a", "u2-a", "u3-a", "u4-a"]
    assert all(len(b.devices) <= 2 for b in enqueued)
    bad = intent(("no_such_segment",)).model_copy(update={"intent_id": "i2"})
    await consumer(BusMessage(body=bad.to_json(), priority=9, message_id="i2", redelivered=False))
    snap = await counters.snapshot()
    assert snap.get("intents_done") == 2
    assert snap.get("intents_rejected") == 1
    assert snap.get("suppressed:muted") == 1
    assert snap.get("recipients") == 4
