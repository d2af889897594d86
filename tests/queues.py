"""Deleting a test namespace's pipeline queues (intent queue, dramatiq's delivery queues) after a
real-backend test."""

from __future__ import annotations

from goalhorn.keys import PLATFORMS, Keys
from goalhorn.settings import Settings
from tests.conftest import delete_amqp_namespace


async def delete_delivery_queues(settings: Settings) -> None:
    keys = Keys(settings.namespace)
    delivery = [keys.delivery_queue(p) + suffix for p in PLATFORMS for suffix in ("", ".DQ", ".XQ")]
    await delete_amqp_namespace(settings, [keys.intent_queue, *delivery])
