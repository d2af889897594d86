"""The intent bus: the same behaviour on the in-process bus and on RabbitMQ, and RabbitMQ's fault handling."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest

from goalhorn.bus import Bus, BusMessage, Requeue
from goalhorn.bus.rabbitmq import RabbitBus
from goalhorn.errors import BusError, BusUnavailable, PublishNotConfirmed, UnknownQueue
from goalhorn.keys import Keys
from goalhorn.settings import Settings
from tests.conftest import delete_amqp_namespace
from tests.tcpproxy import TCPProxy

pytestmark = pytest.mark.timeout(30)


def queue_of(settings: Settings, suffix: str = "") -> str:
    base = Keys(settings.namespace).intent_queue
    return f"{base}.{suffix}" if suffix else base


async def eventually(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Poll until ``predicate`` holds; a TimeoutError after ``limit_s`` fails the test."""
    async with asyncio.timeout(limit_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


async def test_round_trip_keeps_body_priority_id_and_headers(bus: Bus, settings: Settings) -> None:
    queue = queue_of(settings)
    await bus.start([queue])
    seen: list[BusMessage] = []

    async def handler(message: BusMessage) -> None:
        seen.append(message)

    await bus.publish(queue, b"\x00goal\xff", priority=7, message_id="i-1", headers={"game": "g1", "kind": "goal"})
    subscription = await bus.consume(queue, handler, prefetch=4)
    await eventually(lambda: len(seen) == 1)
    await subscription.cancel()

    assert seen == [BusMessage(b"\x00goal\xff", 7, "i-1", False, {"game": "g1", "kind": "goal"})]
    assert await bus.depth(queue) == 0


async def test_failed_handler_sees_the_message_again_and_it_is_acked_once(
    bus: Bus, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    queue = queue_of(settings)
    await bus.start([queue])
    redelivered: list[bool] = []

    async def handler(message: BusMessage) -> None:
        redelivered.append(message.redelivered)
        if len(redelivered) == 1:
            raise RuntimeError("provider down")

    await bus.publish(queue, b"x", message_id="i-1")
    with caplog.at_level(logging.WARNING, logger="goalhorn.bus"):
        subscription = await bus.consume(queue, handler, prefetch=1)
        await eventually(lambda: len(redelivered) == 2)
        # Cancelling closes the consumer: a message left unacked would be back in the queue.
        await subscription.cancel()

    assert redelivered == [False, True]
    assert await bus.depth(queue) == 0
    # One logged handler failure, and no lost channel (a second ack of one delivery would close it).
    assert [record.levelname for record in caplog.records] == ["ERROR"]


async def test_a_handler_asking_for_a_requeue_sees_the_message_again_without_an_error_logged(
    bus: Bus, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    queue = queue_of(settings)
    await bus.start([queue])
    redelivered: list[bool] = []

    async def handler(message: BusMessage) -> None:
        redelivered.append(message.redelivered)
        if len(redelivered) == 1:
            raise Requeue("its audience cannot be read yet")

    await bus.publish(queue, b"x", message_id="i-1")
    with caplog.at_level(logging.INFO, logger="goalhorn.bus"):
        subscription = await bus.consume(queue, handler, prefetch=1)
        await eventually(lambda: len(redelivered) == 2)
        await subscription.cancel()

    assert redelivered == [False, True]
    assert await bus.depth(queue) == 0
    assert [record.levelname for record in caplog.records] == ["INFO"]
    assert "its audience cannot be read yet" in caplog.records[0].getMessage()


async def test_prefetch_bounds_concurrent_handlers(bus: Bus, settings: Settings) -> None:
    queue = queue_of(settings)
    await bus.start([queue])
    running = peak = finished = 0
    three_running = asyncio.Event()

    async def handler(message: BusMessage) -> None:
        nonlocal running, peak, finished
        running += 1
        peak = max(peak, running)
        if running == 3:
            three_running.set()
        try:
            await asyncio.wait_for(three_running.wait(), 5)  # never set if handlers ran one at a time
            await asyncio.sleep(0.02)  # hold the slot while further deliveries could arrive
        finally:
            running -= 1
            finished += 1

    for number in range(9):
        await bus.publish(queue, b"x", message_id=f"i-{number}")
    subscription = await bus.consume(queue, handler, prefetch=3)
    await eventually(lambda: finished == 9)
    await subscription.cancel()

    assert peak == 3


async def test_high_priority_is_consumed_before_a_thousand_queued_low_ones(bus: Bus, settings: Settings) -> None:
    queue = queue_of(settings)
    await bus.start([queue])
    await asyncio.gather(*(bus.publish(queue, b"low", priority=1, message_id=f"low-{n}") for n in range(1000)))
    await bus.publish(queue, b"high", priority=9, message_id="high")
    order: list[str] = []

    async def handler(message: BusMessage) -> None:
        order.append(message.message_id)

    subscription = await bus.consume(queue, handler, prefetch=1)
    await eventually(lambda: len(order) >= 2)
    await subscription.cancel()

    assert order[0] == "high"
    assert order[1].startswith("low-")


async def test_undeclared_queue_is_refused(bus: Bus, settings: Settings) -> None:
    await bus.start([queue_of(settings)])
    stranger = queue_of(settings, "undeclared")

    async def handler(message: BusMessage) -> None:
        pass

    with pytest.raises(UnknownQueue):
        await bus.publish(stranger, b"x", message_id="i-1")
    with pytest.raises(UnknownQueue):
        await bus.consume(stranger, handler, prefetch=1)
    with pytest.raises(UnknownQueue):
        await bus.depth(stranger)
    with pytest.raises(UnknownQueue):
        await bus.purge(stranger)


async def test_invalid_arguments_are_refused(bus: Bus, settings: Settings) -> None:
    queue = queue_of(settings)
    await bus.start([queue])

    async def handler(message: BusMessage) -> None:
        pass

    with pytest.raises(ValueError, match="priority"):
        await bus.publish(queue, b"x", priority=10, message_id="i-1")
    with pytest.raises(ValueError, match="message_id"):
        await bus.publish(queue, b"x", message_id="")
    with pytest.raises(ValueError, match="prefetch"):
        await bus.consume(queue, handler, prefetch=0)


async def test_depth_counts_ready_messages_and_purge_drops_them(bus: Bus, settings: Settings) -> None:
    queue, other = queue_of(settings), queue_of(settings, "other")
    await bus.start([queue, other])
    for number in range(5):
        await bus.publish(queue, b"x", message_id=f"i-{number}")
    await bus.publish(other, b"y", message_id="o-1")

    assert await bus.depth(queue) == 5
    assert await bus.purge(queue) == 5
    assert await bus.depth(queue) == 0
    assert await bus.depth(other) == 1


async def test_depth_leaves_out_messages_being_handled(bus: Bus, settings: Settings) -> None:
    queue = queue_of(settings)
    await bus.start([queue])
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(message: BusMessage) -> None:
        started.set()
        await release.wait()

    for number in range(3):
        await bus.publish(queue, b"x", message_id=f"i-{number}")
    subscription = await bus.consume(queue, handler, prefetch=1)
    try:
        await asyncio.wait_for(started.wait(), 5)
        assert await bus.depth(queue) == 2
    finally:
        release.set()
        await subscription.cancel()


async def test_start_can_add_queues_to_a_running_bus(bus: Bus, settings: Settings) -> None:
    first, second = queue_of(settings), queue_of(settings, "second")
    await bus.start([first])
    await bus.publish(first, b"x", message_id="i-1")
    await bus.start([first, second])
    await bus.publish(second, b"y", message_id="i-2")

    assert (await bus.depth(first), await bus.depth(second)) == (1, 1)


async def test_a_closed_bus_refuses_work(bus: Bus, settings: Settings) -> None:
    queue = queue_of(settings)
    await bus.start([queue])
    await bus.aclose()

    with pytest.raises(BusError):
        await bus.publish(queue, b"x", message_id="i-1")


# --- RabbitMQ only --------------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.parametrize("backend", ["real"])
async def test_publish_to_a_queue_deleted_out_of_band_is_not_confirmed(bus: Bus, settings: Settings) -> None:
    queue, other = queue_of(settings), queue_of(settings, "other")
    await bus.start([queue, other])
    assert settings.amqp_url is not None
    async with await aio_pika.connect(settings.amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)

    with pytest.raises(PublishNotConfirmed):
        await bus.publish(queue, b"x", message_id="i-1")
    # The return did not break the bus.
    await bus.publish(other, b"y", message_id="o-1")
    assert await bus.depth(other) == 1


@pytest.fixture
async def proxy() -> AsyncIterator[TCPProxy]:
    server = TCPProxy()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


@pytest.fixture
async def proxied_bus(settings: Settings, proxy: TCPProxy) -> AsyncIterator[RabbitBus]:
    """A RabbitMQ bus reaching the broker through ``proxy``, with short reconnect and publish budgets."""
    proxied = settings.model_copy(
        update={"amqp_url": proxy.url(), "reconnect_max_delay_s": 0.2, "publish_timeout_s": 5.0}
    )
    bus = RabbitBus(proxied)
    try:
        yield bus
    finally:
        await bus.aclose()
        await delete_amqp_namespace(settings, bus.queues)


@pytest.mark.real
@pytest.mark.parametrize("backend", ["real"])
async def test_subscription_survives_a_dropped_connection(
    proxied_bus: RabbitBus, settings: Settings, proxy: TCPProxy
) -> None:
    bus, queue = proxied_bus, queue_of(settings)
    await bus.start([queue])
    seen: list[tuple[str, bool]] = []
    handling = asyncio.Event()
    release = asyncio.Event()
    completed: list[str] = []

    async def handler(message: BusMessage) -> None:
        seen.append((message.message_id, message.redelivered))
        if message.message_id == "before" and not message.redelivered:
            handling.set()
            await asyncio.wait_for(release.wait(), 5)
        completed.append(message.message_id)

    subscription = await bus.consume(queue, handler, prefetch=2)
    await bus.publish(queue, b"1", message_id="before")
    await asyncio.wait_for(handling.wait(), 5)

    await proxy.drop(refuse=True)
    during = asyncio.create_task(bus.publish(queue, b"2", message_id="during"))
    await eventually(lambda: proxy.refused >= 2)  # the bus is trying to reconnect and being turned away
    assert not during.done()
    release.set()  # the handler ends, but its ack has no connection left to travel on
    proxy.accept()
    await asyncio.wait_for(during, 5)
    await bus.publish(queue, b"3", message_id="after")
    await eventually(lambda: len(seen) == 4)
    await subscription.cancel()

    assert seen[0] == ("before", False)
    assert sorted(seen[1:]) == [("after", False), ("before", True), ("during", False)]
    # The drop did not cut the first handler short: it ran to its end, then its ack was lost.
    assert sorted(completed) == ["after", "before", "before", "during"]
    assert await bus.depth(queue) == 0


@pytest.mark.real
@pytest.mark.parametrize("backend", ["real"])
async def test_publish_gives_up_when_the_broker_stays_away(settings: Settings, proxy: TCPProxy) -> None:
    bus = RabbitBus(
        settings.model_copy(update={"amqp_url": proxy.url(), "reconnect_max_delay_s": 0.1, "publish_timeout_s": 0.5})
    )
    queue = queue_of(settings)
    try:
        await bus.start([queue])
        await proxy.drop(refuse=True)
        with pytest.raises(BusUnavailable):
            await bus.publish(queue, b"x", message_id="i-1")
    finally:
        await bus.aclose()  # while it is still reconnecting
        await delete_amqp_namespace(settings, bus.queues)
    assert proxy.refused >= 1
