"""Running batches through a real delivery stage and an in-process worker until every batch is done."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from goalhorn.catalog import default_catalog
from goalhorn.counters import CounterSnapshot, PipelineCounters
from goalhorn.dispatch.stage import DeliveryStage, DeliveryWorker, make_broker
from goalhorn.models import EncodedBatch
from goalhorn.providers import Provider
from goalhorn.redis_client import Redis, make_redis
from goalhorn.settings import Settings
from tests.queues import delete_delivery_queues


@asynccontextmanager
async def delivery_stage(settings: Settings, provider: Provider) -> AsyncIterator[tuple[DeliveryStage, Redis]]:
    """A stage whose every provider is ``provider``, with its worker running, and a Redis client;
    the worker stops and the namespace's delivery queues go when the block ends."""
    stage = DeliveryStage(settings, make_broker(settings), lambda platform, render: provider, default_catalog().render)
    redis = make_redis(settings)
    worker = DeliveryWorker(stage)
    worker.start()
    try:
        yield stage, redis
    finally:
        await asyncio.to_thread(worker.stop)
        stage.close()
        stage.broker.close()
        await redis.aclose()
        if settings.amqp_url:
            await delete_delivery_queues(settings)


async def deliver_all(
    stage: DeliveryStage, redis: Redis, batches: Sequence[EncodedBatch], timeout_s: float = 30
) -> CounterSnapshot:
    """Enqueue ``batches`` and wait until every batch published so far is done."""
    counters = PipelineCounters(redis, stage.keys)
    for batch in batches:
        await stage.enqueue(batch)
    await counters.add({"batches_published": len(batches)})
    async with asyncio.timeout(timeout_s):
        while True:
            snap = await counters.snapshot()
            if snap.get("batches_done") >= snap.get("batches_published") > 0:
                return snap
            await asyncio.sleep(0.05)
