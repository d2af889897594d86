"""The RabbitMQ bus: one durable direct exchange, a durable priority queue per name, confirms, manual acks.

Reconnection is supervised here instead of by aio-pika's ``connect_robust``, whose recovery has known
gaps: consumers not re-established after a broker restart (mosquito/aio-pika#231, #626), queues tracked
in a ``WeakSet`` and silently left out of recovery once garbage-collected (#594, changed by #666), and
consumers cancelled by the broker never restored (#334). A :class:`_Link` is one plain connection with
the channels that depend on it; any unexpected close of the connection or of one of those channels (or
a broker-side consumer cancel) drops the whole link and reconnects with capped, jittered exponential
backoff, re-declaring the topology and re-attaching every live subscription. Messages unacked at the
moment of a disconnect are redelivered by the broker with ``redelivered`` set: that is the at-least-once
guarantee, so a handler whose ack is lost is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from goalhorn.backoff import Backoff
from goalhorn.bus import MAX_PRIORITY, Bus, BusMessage, Handler, Requeue, Subscription, check_publish
from goalhorn.errors import BusError, BusUnavailable, ConfigError, PublishNotConfirmed, UnknownQueue
from goalhorn.keys import Keys
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

_FIRST_RETRY_DELAY_S = 0.1
_CLOSE_TIMEOUT_S = 5.0
_QUEUE_ARGUMENTS: dict[str, Any] = {"x-max-priority": MAX_PRIORITY, "x-queue-type": "classic"}

# How a lost connection or channel surfaces to a caller. TimeoutError is an OSError: catch it first.
_LINK_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.AMQPChannelError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
)
_SETUP_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *_LINK_ERRORS)


@dataclass(eq=False)
class _Link:
    """One connection, its publish exchange, and the channels whose loss means the link is lost."""

    connection: AbstractConnection
    exchange: AbstractExchange
    channels: set[AbstractChannel] = field(default_factory=set)
    broken: bool = False


class RabbitBus(Bus):
    """The intent bus on RabbitMQ; survives broker restarts and network drops by reconnecting."""

    def __init__(self, settings: Settings) -> None:
        if not settings.amqp_url:
            raise ConfigError("RabbitBus needs settings.amqp_url")
        self._settings = settings
        self._url = settings.amqp_url
        self._exchange_name = Keys(settings.namespace).intent_exchange
        self._queues: dict[str, None] = {}  # an ordered set
        self._subscriptions: set[_RabbitSubscription] = set()
        self._link: _Link | None = None
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()  # serializes (re)connecting, declaring and attaching
        self._reconnector: asyncio.Task[None] | None = None
        self._publishing_ids = _KeyedLocks()
        self._closed = False

    @property
    def queues(self) -> tuple[str, ...]:
        """The declared queue names, in declaration order."""
        return tuple(self._queues)

    async def start(self, queues: Iterable[str]) -> None:
        self._check_open()
        async with self._lock:
            new = [name for name in dict.fromkeys(queues) if name not in self._queues]
            if self._link is None and self._reconnector is None:
                self._queues.update(dict.fromkeys(new))
                link = await self._translate_setup(self._connect())
                self._install(link)
            elif self._link is not None and new:
                await self._translate_setup(self._declare(self._link.connection, new))
                self._queues.update(dict.fromkeys(new))
            else:  # reconnecting: the next attempt declares them
                self._queues.update(dict.fromkeys(new))

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int = 0,
        message_id: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        check_publish(priority, message_id)
        self._check_open()
        self._check_queue(queue)
        message = aio_pika.Message(
            bytes(body),
            priority=priority,
            message_id=message_id,
            headers=dict(headers or {}),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        timeout = self._settings.publish_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        # aiormq matches a returned message to its publish by message_id: two in flight with the same id
        # on one channel could pin the return on the wrong one and confirm the dropped one.
        async with self._publishing_ids.hold(message_id, deadline):
            while True:
                link = await self._wait_link(deadline)
                try:
                    async with asyncio.timeout_at(deadline):
                        await link.exchange.publish(message, routing_key=queue, mandatory=True)
                except aiormq.exceptions.PublishError as exc:
                    raise PublishNotConfirmed(f"{message_id!r} to {queue!r}: returned unroutable") from exc
                except aiormq.exceptions.DeliveryError as exc:
                    raise PublishNotConfirmed(f"{message_id!r} to {queue!r}: nacked") from exc
                except TimeoutError as exc:
                    raise PublishNotConfirmed(f"{message_id!r} to {queue!r}: no confirm in {timeout}s") from exc
                except _LINK_ERRORS as exc:
                    # Whether the broker got it is unknown: publish again on the next link (at-least-once).
                    log.warning("publish of %s to %s lost with the link (%r); retrying", message_id, queue, exc)
                    self._on_link_failure(link, repr(exc))
                    continue
                return

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        self._check_open()
        self._check_queue(queue)
        subscription = _RabbitSubscription(self, queue, handler, prefetch)
        async with self._lock:
            self._subscriptions.add(subscription)
            link = self._link
            if link is not None and not link.broken:
                try:
                    await subscription.attach(link)
                except _LINK_ERRORS as exc:
                    # The subscription stays registered: the next link attaches it.
                    self._on_link_failure(link, repr(exc))
        return subscription

    async def depth(self, queue: str) -> int:
        async def ready_count(channel: AbstractChannel) -> int:
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0

        return await self._on_fresh_channel(queue, ready_count)

    async def purge(self, queue: str) -> int:
        async def drop_ready(channel: AbstractChannel) -> int:
            target = await channel.get_queue(queue, ensure=False)
            purged = await target.purge()
            return purged.message_count or 0

        return await self._on_fresh_channel(queue, drop_ready)

    async def aclose(self) -> None:
        # Subscriptions first, as the memory bus does: in-flight handlers may still publish.
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        self._closed = True
        self._ready.set()  # wakes waiting publishers, which then see the bus closed
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnector
            self._reconnector = None
        link, self._link = self._link, None
        if link is not None:
            await _close_quietly(link.connection)

    # --- connection supervision -----------------------------------------------------------------

    async def _connect(self) -> _Link:
        """Open a connection, declare the topology and attach every live subscription to it."""
        connection = await aio_pika.connect(self._url, timeout=self._settings.publish_timeout_s)
        try:
            await self._declare(connection, self._queues)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.get_exchange(self._exchange_name, ensure=False)
            link = _Link(connection, exchange)
            connection.close_callbacks.add(functools.partial(self._on_connection_closed, link))
            self._watch(link, channel)
            for subscription in list(self._subscriptions):
                await subscription.attach(link)
        except BaseException:
            await _close_quietly(connection)
            raise
        return link

    async def _declare(self, connection: AbstractConnection, queues: Iterable[str]) -> None:
        # A throwaway channel: a declaration error closes it without touching the publish channel.
        channel = await connection.channel(publisher_confirms=False)
        try:
            direct = aio_pika.ExchangeType.DIRECT
            exchange = await channel.declare_exchange(self._exchange_name, direct, durable=True)
            for name in queues:
                queue = await channel.declare_queue(name, durable=True, arguments=_QUEUE_ARGUMENTS)
                await queue.bind(exchange, routing_key=name)
        finally:
            await _close_quietly(channel)

    async def _translate_setup(self, setup: Awaitable[T]) -> T:
        try:
            return await setup
        except aiormq.exceptions.ChannelClosed as exc:
            raise BusError(f"RabbitMQ refused the topology of {self._exchange_name!r}: {exc!r}") from exc
        except _SETUP_ERRORS as exc:
            raise BusUnavailable(f"RabbitMQ is unreachable: {exc!r}") from exc

    def _install(self, link: _Link) -> None:
        self._link = link
        if link.broken:  # a close callback ran while the link was being set up
            self._lose(link, "closed while connecting")
        else:
            self._ready.set()

    def _watch(self, link: _Link, channel: AbstractChannel) -> None:
        link.channels.add(channel)
        channel.close_callbacks.add(functools.partial(self._on_channel_closed, link))

    def _on_connection_closed(self, link: _Link, _sender: object, exc: BaseException | None = None) -> None:
        self._on_link_failure(link, f"connection closed: {exc!r}")

    def _on_channel_closed(self, link: _Link, sender: object, exc: BaseException | None = None) -> None:
        if sender in link.channels:  # channels we close on purpose are removed first
            self._on_link_failure(link, f"channel closed: {exc!r}")

    def _on_link_failure(self, link: _Link, reason: str) -> None:
        link.broken = True
        self._lose(link, reason)

    def _lose(self, link: _Link, reason: str) -> None:
        if self._closed or link is not self._link:
            return
        log.warning("lost the RabbitMQ link (%s); reconnecting", reason)
        self._link = None
        self._ready.clear()
        self._reconnector = asyncio.create_task(self._reconnect(link))

    async def _reconnect(self, old: _Link) -> None:
        # A channel-only failure leaves the connection up: drop it too, so the broker requeues what
        # it holds and everything restarts from one state.
        await _close_quietly(old.connection)
        backoff = Backoff(_FIRST_RETRY_DELAY_S, max(_FIRST_RETRY_DELAY_S, self._settings.reconnect_max_delay_s))
        while not self._closed:
            async with self._lock:
                try:
                    link = await self._connect()
                except Exception as exc:
                    failure: Exception = exc
                else:
                    log.info("reconnected to RabbitMQ after %d failed attempts", backoff.failures)
                    self._install(link)
                    return
            delay = backoff.next_delay()
            log.warning("RabbitMQ reconnect attempt %d failed (%r); next in %.2fs", backoff.failures, failure, delay)
            await asyncio.sleep(delay)

    async def _wait_link(self, deadline: float) -> _Link:
        """The current link, waiting for a reconnection until ``deadline`` (loop time)."""
        while True:
            self._check_open()
            link = self._link
            if link is not None and not link.broken:
                return link
            try:
                async with asyncio.timeout_at(deadline):
                    await self._ready.wait()
            except TimeoutError:
                raise BusUnavailable(
                    f"RabbitMQ unreachable for {self._settings.publish_timeout_s}s (reconnecting)"
                ) from None

    async def _on_fresh_channel(self, queue: str, operation: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """Run a queue operation on a throwaway channel, waiting out an outage like a publish."""
        self._check_open()
        self._check_queue(queue)
        deadline = asyncio.get_running_loop().time() + self._settings.publish_timeout_s
        while True:
            link = await self._wait_link(deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    channel = await link.connection.channel(publisher_confirms=False)
                    try:
                        return await operation(channel)
                    finally:
                        await _close_quietly(channel)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise BusError(f"queue {queue!r} is missing on the broker") from exc
            except aiormq.exceptions.ChannelClosed as exc:
                # Only this throwaway channel failed; the link is fine.
                raise BusError(f"the broker refused an operation on {queue!r}: {exc!r}") from exc
            except TimeoutError as exc:
                raise BusUnavailable(f"RabbitMQ did not answer about {queue!r}") from exc
            except _LINK_ERRORS as exc:
                self._on_link_failure(link, repr(exc))

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("the bus is closed")

    def _check_queue(self, queue: str) -> None:
        if queue not in self._queues:
            raise UnknownQueue(f"queue {queue!r} was not declared")


@dataclass(frozen=True)
class _Attachment:
    link: _Link
    channel: AbstractChannel
    queue: AbstractQueue
    consumer_tag: str


class _RabbitSubscription(Subscription):
    """A consumer that follows the bus from link to link; one task per delivered message."""

    def __init__(self, bus: RabbitBus, queue: str, handler: Handler, prefetch: int) -> None:
        self._bus = bus
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        # basic_qos bounds one channel; this also counts handlers still running from a lost link.
        self._slots = asyncio.Semaphore(prefetch)
        self._tasks: set[asyncio.Task[None]] = set()
        self._attachment: _Attachment | None = None
        self._cancelled = False

    async def attach(self, link: _Link) -> None:
        """Start consuming on ``link`` (called with the bus lock held)."""
        channel = await link.connection.channel(publisher_confirms=False)
        self._bus._watch(link, channel)
        await channel.set_qos(prefetch_count=self._prefetch)
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(
            lambda _frame: self._bus._on_link_failure(link, f"broker cancelled the consumer of {self._queue}")
        )
        queue = await channel.get_queue(self._queue, ensure=False)
        tag = await queue.consume(self._deliver)
        self._attachment = _Attachment(link, channel, queue, tag)

    async def cancel(self) -> None:
        self._cancelled = True
        async with self._bus._lock:
            self._bus._subscriptions.discard(self)
            attachment, self._attachment = self._attachment, None
            if attachment is not None:
                attachment.link.channels.discard(attachment.channel)
        if attachment is not None and not attachment.channel.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await attachment.queue.cancel(attachment.consumer_tag)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if attachment is not None:
            # Deliveries that arrived after the cancel were never handled: closing requeues them.
            await _close_quietly(attachment.channel)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        # aio-pika cancels its delivery tasks when the channel closes; the handler runs in a task of
        # ours so that a drop does not interrupt it midway.
        if self._cancelled:
            return
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        async with self._slots:
            bus_message = BusMessage(
                body=message.body,
                priority=message.priority or 0,
                message_id=message.message_id or "",
                redelivered=bool(message.redelivered),
                headers={key: _header_text(value) for key, value in (message.headers or {}).items()},
            )
            try:
                await self._handler(bus_message)
            except Requeue as exc:
                log.info("%s message %s requeued: %s", self._queue, message.message_id, exc)
                await self._settle(message, ack=False)
            except Exception:
                log.exception("handler failed on %s message %s; requeued", self._queue, message.message_id)
                await self._settle(message, ack=False)
            except BaseException:
                await self._settle(message, ack=False)
                raise
            else:
                await self._settle(message, ack=True)

    async def _settle(self, message: AbstractIncomingMessage, *, ack: bool) -> None:
        try:
            if ack:
                await message.ack()
            else:
                await message.nack(requeue=True)
        except Exception as exc:
            # The delivery's channel is gone with its link; the broker redelivers the message.
            log.warning(
                "could not %s %s message %s (%r); the broker will redeliver it",
                "ack" if ack else "requeue",
                self._queue,
                message.message_id,
                exc,
            )


class _KeyedLocks:
    """One lock per key, forgotten once nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str, deadline: float) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await lock.acquire()
            except TimeoutError:
                raise PublishNotConfirmed(f"an earlier publish of {key!r} is still unconfirmed") from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _header_text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


async def _close_quietly(closable: AbstractConnection | AbstractChannel) -> None:
    """Close, ignoring the errors of something that is already dead."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await closable.close()
