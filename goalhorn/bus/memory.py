"""The in-process bus: RabbitMQ's queue semantics without a broker.

Messages are served highest priority first, then in publish order. A handler that raises gets its
message requeued at its original position with ``redelivered`` set, as RabbitMQ does on a nack.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Iterable

from goalhorn.bus import Bus, BusMessage, Handler, Requeue, Subscription, check_publish
from goalhorn.errors import BusError, UnknownQueue

log = logging.getLogger(__name__)

_Entry = tuple[int, int, BusMessage]  # (-priority, sequence, message)


class _Queue:
    def __init__(self) -> None:
        self.heap: list[_Entry] = []
        self.ready = asyncio.Condition()

    async def put(self, entry: _Entry) -> None:
        async with self.ready:
            heapq.heappush(self.heap, entry)
            self.ready.notify()

    async def get(self) -> _Entry:
        async with self.ready:
            await self.ready.wait_for(lambda: bool(self.heap))
            return heapq.heappop(self.heap)


class _MemorySubscription(Subscription):
    def __init__(self, task: asyncio.Task[None], handlers: set[asyncio.Task[None]]) -> None:
        self._task = task
        self._handlers = handlers

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)


class MemoryBus(Bus):
    """The embedded default; one event loop, no persistence."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count()
        self._subscriptions: list[_MemorySubscription] = []
        self._closed = False

    async def start(self, queues: Iterable[str]) -> None:
        for name in queues:
            self._queues.setdefault(name, _Queue())

    def _queue(self, name: str) -> _Queue:
        if self._closed:
            raise BusError("the bus is closed")
        try:
            return self._queues[name]
        except KeyError:
            raise UnknownQueue(f"queue {name!r} was not declared") from None

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
        message = BusMessage(bytes(body), priority, message_id, False, dict(headers or {}))
        await self._queue(queue).put((-priority, next(self._seq), message))

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        if prefetch < 1:
            # A zero-slot semaphore would never deliver; on RabbitMQ, prefetch 0 means unbounded.
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        q = self._queue(queue)
        slots = asyncio.Semaphore(prefetch)
        handlers: set[asyncio.Task[None]] = set()

        async def handle(entry: _Entry) -> None:
            neg_priority, seq, message = entry
            redelivery = BusMessage(message.body, message.priority, message.message_id, True, message.headers)
            try:
                await handler(message)
            except Requeue as exc:
                log.info("%s message %s requeued: %s", queue, message.message_id, exc)
                await q.put((neg_priority, seq, redelivery))
            except Exception:
                log.exception("handler failed on %s message %s; requeued", queue, message.message_id)
                await q.put((neg_priority, seq, redelivery))
            except BaseException:
                # A cancelled handler did not finish its effect: requeue, as the broker does when unacked.
                await q.put((neg_priority, seq, redelivery))
                raise
            finally:
                slots.release()

        async def pump() -> None:
            while True:
                await slots.acquire()
                entry = await q.get()
                task = asyncio.create_task(handle(entry))
                handlers.add(task)
                task.add_done_callback(handlers.discard)

        subscription = _MemorySubscription(asyncio.create_task(pump()), handlers)
        self._subscriptions.append(subscription)
        return subscription

    async def depth(self, queue: str) -> int:
        return len(self._queue(queue).heap)

    async def purge(self, queue: str) -> int:
        q = self._queue(queue)
        async with q.ready:
            count = len(q.heap)
            q.heap.clear()
        return count

    async def aclose(self) -> None:
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions.clear()
        self._closed = True
