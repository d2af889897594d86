"""Deleting a test namespace's pipeline queues (intent queue, dramatiq's delivery queues) after a
real-backend test."""

from __future__ import annotations

from goalhorn.settings import Settings
from tests.conftest import delete_amqp_namespace, pipeline_queues


async def delete_delivery_queues(settings: Settings) -> None:
    await delete_amqp_namespace(settings, pipeline_queues(settings.namespace))
