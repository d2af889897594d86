"""The provider contract: prepare a batch once, then send it one device at a time.

A provider knows one wire format and maps its vendor's answers into ``DeliveryResult`` values
(per-token outcomes) or ``ProviderError`` subclasses (failures of the provider as a whole). It decides
nothing about retries, breakers, pacing, concurrency or idempotency: the dispatch stage does
(``goalhorn.dispatch.delivery``), calling ``prepare(batch)`` once per batch (an access token, the
message bytes per locale) and the ``Send`` it returns once per device, as its own concurrency,
breakers and claims allow. ``concurrency`` says how many of a provider's requests a worker keeps in
flight, ``endpoint_concurrency`` (webhooks) how many per circuit.

``send(batch)`` runs a whole batch through the same two steps, for callers that have one batch and
no dispatch stage (``goalhorn send``, the benchmarks). A provider with nothing to prepare per batch
(an in-memory stand-in) may implement ``send`` alone instead; its devices are then sent one by one.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import math
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from goalhorn.keys import Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device

Send = Callable[[Device], Awaitable[DeliveryResult]]
"""Sends one device of a prepared batch: its result (``ProviderError`` for a provider-wide failure)."""
STALL_S = 0.5
"""A deadline that fires this much later than due found the event loop stalled (``deadline``)."""
STALL_GRACES = 3
COLLAPSE_ID_MAX_BYTES = 64
"""APNs refuses an ``apns-collapse-id`` longer than this (FCM passes it on to APNs as is)."""


class Provider(abc.ABC):
    """One way out: FCM, APNs, webhooks, or the console."""

    platform: Platform
    concurrency: int = 100
    """Requests in flight per worker process (the dispatch stage holds the slots)."""
    endpoint_concurrency: int | None = None
    """Requests in flight per circuit (``circuit``), taken before a shared slot; None: no such cap."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.prepare is Provider.prepare and cls.send is Provider.send:
            raise TypeError(f"{cls.__name__} implements neither prepare nor send")

    async def prepare(self, batch: DeliveryBatch) -> Send:
        """What sending the batch's devices needs, done once (default: each device as a batch of one
        through ``send``, for providers that implement ``send`` alone)."""

        async def send_alone(device: Device) -> DeliveryResult:
            (result,) = await self.send(batch.model_copy(update={"devices": (device,)}))
            return result

        return send_alone

    async def send(self, batch: DeliveryBatch) -> list[DeliveryResult]:
        """Deliver to every device of the batch, ``concurrency`` at a time; one result per device, in
        batch order."""
        send = await self.prepare(batch)
        slots = asyncio.Semaphore(self.concurrency)

        async def one(device: Device) -> DeliveryResult:
            async with slots:
                return await send(device)

        return list(await asyncio.gather(*(one(device) for device in batch.devices)))

    def circuit(self, device: Device) -> str:
        """The circuit breaker a device's sends count against: per provider and credential by default,
        per endpoint where one endpoint can fail alone (webhooks)."""
        return self.platform

    async def aclose(self) -> None:
        """Release connections; the default has none."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


_ACCEPTED = DeliveryResult(device_id="-", outcome="sent")


def accepted(device: Device, message_id: str | None) -> DeliveryResult:
    """The result of a push the provider accepted: a copy of one validated result with the device's
    id and the message id (every field is known good). It is the result of nearly every request, on
    the hot path: a copy costs a quarter of ``model_construct``, which fills each default in Python."""
    return _ACCEPTED.model_copy(update={"device_id": device.device_id, "provider_message_id": message_id})


def render_failed(device: Device, exc: Exception) -> DeliveryResult:
    """The result of a device whose message could not be rendered (``RenderFailed`` from the renderer):
    a message error, which the dispatch stage dead-letters without counting it against the provider."""
    reason = f"render_failed: {exc}"
    return DeliveryResult(device_id=device.device_id, outcome="failed", reason=reason, message_error=True)


DEADLINE_TICK_S = 0.05
"""Deadlines fall due on ticks this far apart (a request times out up to this much after its time)."""


class _Ticks:
    """One event loop's pending deadlines by the tick they fall due on: one timer per tick in use, not one
    per request (a timer on the loop's heap, made, cancelled and popped again for every push, cost more
    than the deadline's own work)."""

    __slots__ = ("_due", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[int, set[deadline]] = {}

    def add(self, pending: deadline, at: float) -> int:
        """Fire ``pending`` on the first tick at or after the loop time ``at``; returns that tick."""
        tick = math.ceil(at / DEADLINE_TICK_S)
        due = self._due.get(tick)
        if due is None:
            due = self._due[tick] = set()
            self._loop.call_at(tick * DEADLINE_TICK_S, self._fire, tick)
        due.add(pending)
        return tick

    def remove(self, pending: deadline, tick: int) -> None:
        due = self._due.get(tick)
        if due is not None:
            due.discard(pending)

    def _fire(self, tick: int) -> None:
        for pending in self._due.pop(tick, ()):
            pending._expire()


_TICKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticks] = weakref.WeakKeyDictionary()


class deadline:
    """``asyncio.timeout(seconds)`` for a provider request, except that time the event loop did not run
    does not count against the provider. After a stall (the process descheduled on a busy machine, a
    long collection, a blocking call), the answers that arrived meanwhile are read in the same loop turn
    as the expired timer, and a plain timeout cancels the request first: a push the provider accepted
    would be taken for a timeout and sent again. So a deadline that fires more than ``STALL_S`` late
    is pushed back by how late it was (at most ``seconds``, ``STALL_GRACES`` times), which lets those
    answers through; a provider that is merely slow still times out after ``seconds``.

    No timer of its own and no generator: it is around every request, on the hot path. It waits on
    its loop's tick (``_Ticks``, ``DEADLINE_TICK_S``). Expiry cancels the task and turns that
    cancellation into ``TimeoutError`` on the way out, as ``asyncio.timeout`` does (a cancellation from
    elsewhere passes through)."""

    __slots__ = ("_cancelling", "_due", "_expired", "_graces", "_loop", "_seconds", "_task", "_tick", "_ticks")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._graces = STALL_GRACES
        self._expired = False

    async def __aenter__(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("deadline() is used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        ticks = _TICKS.get(loop)
        if ticks is None:
            ticks = _TICKS[loop] = _Ticks(loop)
        self._ticks = ticks
        self._due = due = loop.time() + self._seconds
        self._tick = ticks.add(self, due)

    def _expire(self) -> None:
        loop = self._loop
        late = loop.time() - self._due  # DEADLINE_TICK_S at most without a stall
        if late > STALL_S and self._graces:
            self._graces -= 1
            self._due = due = loop.time() + min(late, self._seconds)
            self._tick = self._ticks.add(self, due)
        else:
            self._expired = True
            self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._ticks.remove(self, self._tick)
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


def unanswered(device: Device, reason: str, *, maybe_sent: bool) -> DeliveryResult:
    """The result of a request that got no answer (a timeout, a connection that failed or closed):
    retryable. ``maybe_sent`` when the request was written before the answer was lost, so the provider
    may have accepted it (the dispatch stage then keeps its claim for a lease instead of releasing it);
    False only when it certainly never left (no connection, refused before anything was written)."""
    return DeliveryResult(
        device_id=device.device_id, outcome="failed", retryable=True, reason=reason, maybe_sent=maybe_sent
    )


def collapse_id(collapse_key: str) -> str:
    """An intent's collapse key as an ``apns-collapse-id``: as is up to 64 bytes, else its first bytes
    and a hash of the whole (the same key always gives the same id, different keys different ids)."""
    raw = collapse_key.encode()
    if len(raw) <= COLLAPSE_ID_MAX_BYTES:
        return collapse_key
    digest = hashlib.sha256(raw).hexdigest()[:16]
    head = raw[: COLLAPSE_ID_MAX_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"
