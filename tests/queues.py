"""A test namespace's pipeline queues: the intents on its intent queue, and deleting its queues
(intent queue, dramatiq's delivery queues) after a real-backend test."""

from __future__ import annotations

import asyncio

from goalhorn.bus import Bus, BusMessage
from goalhorn.keys import Keys
from goalhorn.models import Intent
from goalhorn.settings import Settings
from tests.conftest import delete_amqp_namespace, pipeline_queues


async def published(bus: Bus, settings: Settings, at_least: int) -> list[Intent]:
    """Every intent on the intent queue: ``at_least`` of them, then a moment longer for any extra."""
    seen: list[BusMessage] = []

    async def handler(message: BusMessage) -> None:
        seen.append(message)

    subscription = await bus.consume(Keys(settings.namespace).intent_queue, handler, prefetch=64)
    try:
        async with asyncio.timeout(10):
            while len(seen) < at_least:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
    finally:
        await subscription.cancel()
    return [Intent.from_json(m.body) for m in seen]


async def delete_delivery_queues(settings: Settings) -> None:
    await delete_amqp_namespace(settings, pipeline_queues(settings.namespace))
