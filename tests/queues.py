"""Deleting a test namespace's RabbitMQ queues after a real-backend test."""

from __future__ import annotations

import contextlib

import aio_pika

from goalhorn.keys import PLATFORMS, Keys
from goalhorn.settings import Settings


async def delete_delivery_queues(settings: Settings) -> None:
    assert settings.amqp_url
    keys = Keys(settings.namespace)
    names = [keys.intent_queue]
    for platform in PLATFORMS:
        base = keys.delivery_queue(platform)
        names += [base, f"{base}.DQ", f"{base}.XQ"]
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                await channel.queue_delete(name)
        channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
            await channel.exchange_delete(keys.intent_exchange)
