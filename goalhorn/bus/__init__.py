"""The intent bus contract, and the factory choosing its backend.

Two backends with one behaviour: ``rabbitmq.RabbitBus`` (aio-pika; durable exchange and priority
queues, persistent messages, publisher confirms with ``mandatory``, manual acks) and
``memory.MemoryBus`` (in-process, the embedded default and a test backend). A consumer's handler
runs to completion before its message is acked; if it raises, the message is requeued and comes
back with ``redelivered`` set. A handler that wants its message back later (its input is not
available yet) waits as long as it sees fit and raises :class:`Requeue`: the same requeue, logged as
one line instead of a failure with its traceback.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from goalhorn.errors import BusError
from goalhorn.settings import Settings

MAX_PRIORITY = 10


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One message as a consumer sees it."""

    body: bytes
    priority: int
    message_id: str
    redelivered: bool
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[BusMessage], Awaitable[None]]


class Requeue(BusError):
    """Raised by a handler to have its message requeued as planned, not as a failure."""


class Subscription(abc.ABC):
    """A running consumer; ``cancel`` stops it after its in-flight handlers finish."""

    @abc.abstractmethod
    async def cancel(self) -> None: ...


class Bus(abc.ABC):
    """Priority queues with at-least-once delivery and acks after the effect."""

    @abc.abstractmethod
    async def start(self, queues: Iterable[str]) -> None:
        """Connect and declare the durable exchange and these queues."""

    @abc.abstractmethod
    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int = 0,
        message_id: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Publish persistently; returns once the broker has confirmed (raises ``PublishNotConfirmed``)."""

    @abc.abstractmethod
    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        """Run ``handler`` for each message, at most ``prefetch`` at a time; ack on return, requeue on raise."""

    @abc.abstractmethod
    async def depth(self, queue: str) -> int:
        """Messages ready in the queue (not counting those being handled)."""

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Drop the ready messages of a queue; returns how many."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def check_publish(priority: int, message_id: str) -> None:
    """Arguments both backends refuse alike."""
    if not 0 <= priority < MAX_PRIORITY:
        raise ValueError(f"priority {priority} is outside 0..{MAX_PRIORITY - 1}")
    if not message_id:
        # RabbitMQ clients put a random id on a message without one, which would defeat dedup.
        raise ValueError("message_id must not be empty")


def make_bus(settings: Settings) -> Bus:
    """RabbitMQ when ``amqp_url`` is set, the in-process bus otherwise."""
    if settings.amqp_url:
        from goalhorn.bus.rabbitmq import RabbitBus

        return RabbitBus(settings)
    from goalhorn.bus.memory import MemoryBus

    return MemoryBus()
