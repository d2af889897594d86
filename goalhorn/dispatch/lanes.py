"""Priority lanes: a critical batch never waits behind a normal batch a worker already holds.

RabbitMQ's per-message priority only orders what is still in a queue. A dramatiq worker prefetches
``2 x worker_threads`` messages per queue and works them in order, so once a backlog of 500-device
batches fills every worker thread, a goal queued behind it waits for them (seconds, issue 13). So:

- **Queues per lane.** A batch goes to its provider's critical queue (``<ns>.delivery.<platform>.critical``)
  when its intent's priority is at least ``GOALHORN_CRITICAL_PRIORITY``, else to the normal one
  (``<ns>.delivery.<platform>``): a goal is never behind a backlog in RabbitMQ, whatever the queue
  type (per-message priorities are kept for the order inside a lane, where the queue has them; a
  quorum queue has none, lanes work there all the same).
- **Threads per lane.** Each deliver process runs ``GOALHORN_WORKER_THREADS`` threads that take any
  batch, critical ones first (dramatiq's in-process work queue is ordered by actor priority, the
  critical actors' is lower), plus ``GOALHORN_CRITICAL_WORKER_THREADS`` reserved threads that take
  only critical batches: however busy the others are, a critical batch starts as soon as its
  consumer hands it over.
- **Providers per lane** (``goalhorn.dispatch.stage``): the critical lane sends through providers and
  a ``Deliverer`` of its own (connections, in-flight slots, pacing), so its sends do not queue behind a
  normal batch's either; the two share the process's circuit breakers.
- **Critical first** (:class:`CriticalFirst`): while a critical batch is being delivered, the normal
  lane's sends wait instead of competing with it for the event loop, the CPU and the provider; what
  they had in flight finishes. A send that waited ``HOLD_MAX_S`` goes on, but only ``TRICKLE`` such
  sends at a time per process: under a steady critical flow the normal lane moves at a trickle, it does
  not come back at full concurrency every ``HOLD_MAX_S`` (which put a goal behind 100 normal requests
  per provider again each time). The hold lasts ``SETTLE_S`` past the last critical batch: goals come
  in clusters (a goal, the next game's, a correction), and a normal lane back at full concurrency in
  the gap between two of them is what the next one would find on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from queue import Empty, PriorityQueue
from typing import Any

import dramatiq
from dramatiq.worker import WorkerThread, _WorkQueueItem

from goalhorn.keys import Lane
from goalhorn.models import DeliveryBatch, DeliveryResult, Device
from goalhorn.providers import Provider, Send

ACTOR_PRIORITY: dict[Lane, int] = {"critical": 0, "normal": 10}
"""dramatiq actor priority of each lane's actors: the order of batches in a worker's work queue (lower first)."""


HOLD_MAX_S = 5.0
"""How long a normal-lane send waits for the critical batches in hand before it may go as one of the
``TRICKLE``: however steady the critical flow, the normal lane still moves."""

TRICKLE = 3
"""Normal-lane sends in flight per process, at most, that went while critical batches were in hand
(having waited ``HOLD_MAX_S``)."""

SETTLE_S = 1.0
"""How long the normal lane stays held after the last critical batch in hand was delivered."""


def lane_of(priority: int, critical_priority: int) -> Lane:
    """The lane of a batch of an intent at ``priority``."""
    return "critical" if priority >= critical_priority else "normal"


class CriticalFirst:
    """One process's critical batches in hand, which the normal lane's sends wait for. Lives in the
    worker's event loop (made with the lanes' ``Deliverer`` s)."""

    def __init__(self, hold_max_s: float = HOLD_MAX_S, trickle: int = TRICKLE, settle_s: float = SETTLE_S) -> None:
        self.hold_max_s = hold_max_s
        self.trickle = trickle
        self.settle_s = settle_s
        self.trickling = 0
        """Normal sends in flight that went while critical batches were in hand."""
        self._active = 0
        self._settling: asyncio.TimerHandle | None = None
        """The end of the hold ``settle_s`` after the last critical batch, while it is pending."""
        self._waking: asyncio.Task[None] | None = None
        self._clear = asyncio.Event()
        self._clear.set()
        self._trickle_turn = asyncio.Condition()
        """What sends past their hold wait on: a trickle send done (wakes one) or the critical lane clear (all)."""

    @property
    def held(self) -> bool:
        """Whether normal sends wait: critical batches in hand, or the last one done less than ``settle_s`` ago."""
        return bool(self._active) or self._settling is not None

    @contextlib.asynccontextmanager
    async def critical(self) -> AsyncIterator[None]:
        """Around the delivery of a critical batch."""
        self._active += 1
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None
        self._clear.clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                if self.settle_s > 0:
                    self._settling = asyncio.get_running_loop().call_later(self.settle_s, self._release)
                else:
                    self._release()

    def _release(self) -> None:
        """The hold ends: every waiting normal send goes."""
        self._settling = None
        if self._active:
            return
        self._clear.set()
        self._waking = asyncio.get_running_loop().create_task(self._wake_trickle())

    async def _wake_trickle(self) -> None:
        async with self._trickle_turn:
            self._trickle_turn.notify_all()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Around a normal-lane send: while critical batches are in hand (or were, ``settle_s`` ago), wait
        until the hold ends, or until ``hold_max_s`` passed and fewer than ``trickle`` sends go the same way."""
        if self.held and await self._wait():
            try:
                yield
            finally:
                async with self._trickle_turn:
                    self.trickling -= 1
                    self._trickle_turn.notify()
        else:
            yield

    async def _wait(self) -> bool:
        """A normal send's wait while critical batches are in hand; whether it goes as one of the trickle."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._clear.wait(), self.hold_max_s)
        if not self.held:
            return False
        async with self._trickle_turn:
            await self._trickle_turn.wait_for(lambda: not self.held or self.trickling < self.trickle)
            if not self.held:
                return False
            self.trickling += 1
            return True


class AfterCritical(Provider):
    """A normal-lane provider: ``inner``, each of whose sends first waits its turn (:meth:`CriticalFirst.turn`),
    with at most ``concurrency`` requests in flight (``GOALHORN_NORMAL_LANE_CONCURRENCY``; 0: ``inner``'s)."""

    def __init__(self, inner: Provider, gate: CriticalFirst, *, concurrency: int = 0) -> None:
        self._inner = inner
        self._gate = gate
        self.platform = inner.platform
        self.concurrency = min(inner.concurrency, concurrency) if concurrency else inner.concurrency
        """In flight over the normal lane's batches: what a critical batch may find on the wire."""
        self.endpoint_concurrency = inner.endpoint_concurrency

    async def prepare(self, batch: DeliveryBatch) -> Send:
        send = await self._inner.prepare(batch)

        async def in_turn(device: Device) -> DeliveryResult:
            async with self._gate.turn():
                return await send(device)

        return in_turn

    def circuit(self, device: Device) -> str:
        return self._inner.circuit(device)

    async def aclose(self) -> None:
        await self._inner.aclose()


class LaneWorkQueue(PriorityQueue[_WorkQueueItem]):
    """A worker's work queue that reserved threads can read critical items from (:meth:`get_critical`)
    while the others take any item, critical ones first."""

    def __init__(self) -> None:
        super().__init__()
        self._critical_below = ACTOR_PRIORITY["critical"] + 1

    def _put(self, item: _WorkQueueItem) -> None:
        super()._put(item)
        # ``put`` wakes one waiter: it may be a reserved thread for a normal item, which waits again.
        self.not_empty.notify_all()

    def get_critical(self, timeout: float) -> _WorkQueueItem:
        """The next critical item; raises ``Empty`` when none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.not_empty:
            while not (self.queue and self.queue[0].priority < self._critical_below):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Empty
                self.not_empty.wait(left)
            item = self._get()
            self.not_full.notify()
            return item


class _CriticalOnly:
    """What a reserved worker thread sees of the work queue: its critical items only."""

    def __init__(self, queue: LaneWorkQueue) -> None:
        self._queue = queue

    def get(self, timeout: float) -> _WorkQueueItem:
        return self._queue.get_critical(timeout)

    def task_done(self) -> None:
        self._queue.task_done()


class LaneWorker(dramatiq.Worker):
    """A dramatiq worker with ``worker_threads`` threads taking any batch (critical first) and
    ``critical_threads`` more taking critical batches only (see the module). One worker per process,
    as dramatiq wants: its boot and shutdown hooks (the event loop, the pause gate) run once."""

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        queues: set[str],
        worker_threads: int,
        critical_threads: int,
        worker_timeout: int,
    ) -> None:
        super().__init__(broker, queues=queues, worker_threads=worker_threads, worker_timeout=worker_timeout)
        self._lanes = LaneWorkQueue()
        self.work_queue = self._lanes  # consumers are made at start, and put into this one
        self.critical_threads = critical_threads

    def start(self) -> None:
        super().start()
        reserved: Any = _CriticalOnly(self._lanes)  # quacks like the work queue, as WorkerThread uses it
        for _ in range(self.critical_threads):
            thread = WorkerThread(
                broker=self.broker, consumers=self.consumers, work_queue=reserved, worker_timeout=self.worker_timeout
            )
            thread.start()
            self.workers.append(thread)  # stopped and joined by ``stop`` with the others
