"""Delivering one batch: expiry, claims, breakers, pacing, sending, and what happens to each device after.

Every device of a batch ends in exactly one place: a final marker counted under
``delivery:<platform>:<count>`` (sent, failed, invalid_token, superseded, expired), a new batch attempt
(retryable failures; devices held by another attempt's claim; devices deferred by an open circuit
breaker, without spending an attempt), or the dead letters (attempts exhausted, or a message that
cannot be built for the device: a template error is neither the device's nor the provider's fault, so
it is not retried and no breaker counts it).

The send path: the provider prepares the batch once (``Provider.prepare``), then a bounded number of
worker coroutines (``Provider.concurrency``) pull its devices one at a time. A worker takes one of the
platform's shared slots (``concurrency`` in flight per worker process, over all batches), then a
device, which it claims in a small window with the devices the batch's other slot holders need (one
script call per window, so what a killed worker leaves claimed is about what it had in flight). Without
per-endpoint caps (FCM, APNs) a worker keeps its slot from one device of its batch to the next until
the batch has none left, so batches take the slots in turn rather than every device queueing for
one behind every other batch's workers (a task switch per device, and windows cut small). For a
provider with per-endpoint caps (webhooks) the endpoint's cap comes first (a device whose endpoint is
at its cap is parked while the worker goes on with others), and endpoints that failed since their
last success share a quarter of the slots besides; a request still unanswered after
``webhook_slow_after_s`` gives its shared slot back and goes on aside (``webhook_slow_concurrency``
of them per process), so endpoints that start hanging hold the shared slots that long at most. Then the
pacing bucket, then the circuit breaker,
consulted for this request at the moment it goes out, then the send. Each device is finished
(``sent``...) or released as soon as its answer is known (coalesced with every batch's into one Redis
call per burst), and the leases of the claims still held are renewed while the batch runs, so a lease
can be short: a worker that dies blocks its claims for one lease at most. While Redis is unreachable
a started batch is held, not failed: its marker writes and later claims are retried for up to
``markers.OUTAGE_HOLD_S``, and the marks are awaited before anything else that may raise, so what the
provider accepted is recorded before the batch can be put back.

The delivery counts are a ledger: a device is counted when its marker moves to a final state (the
scripts say how many moved), so a redelivered batch never counts a device twice. ``docs/delivery.md``
says which counters are exact and which count message handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from goalhorn.counters import DeliveryCounter, PipelineCounters, delivery_counter, dispatch_counts
from goalhorn.dispatch import deadletters
from goalhorn.dispatch.breaker import BUSY, Breakers, CircuitBreaker
from goalhorn.dispatch.breaker_board import BreakerBoard
from goalhorn.dispatch.hygiene import prune_tokens
from goalhorn.dispatch.markers import Claims, DeliveryMarkers, Final
from goalhorn.dispatch.pacing import TokenBucket, quota_refused
from goalhorn.errors import ProviderError, ProviderRateLimited
from goalhorn.keys import Keys, Platform
from goalhorn.liveactivities.registry import LiveRegistry
from goalhorn.models import (
    DELIVERY_COUNTS,
    DeadLetter,
    DeadLetterCode,
    DeadLetterKind,
    DeliveryBatch,
    DeliveryResult,
    Device,
    DispatchCount,
    EncodedBatch,
    utcnow,
)
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers import Provider, Send
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

HELD_RECHECK_S = 2.0
MARK_FLUSH_S = 0.05
"""How long an answered device's marker write may wait for others to go in the same round trip (a
round trip costs the worker more CPU than most of a push's own work; at 10 ms, a few hundred pushes a
second went out in threes). A worker killed in between sends those devices again once their claims
run out, as it does the sends it had in flight."""
MARK_FLUSH_SIZE = 100
MIN_WINDOW = 16
"""The fewest devices a claim window takes (fewer when fewer are left)."""
SUSPECT_SHARE = 4
"""Suspect endpoints share at most 1/``SUSPECT_SHARE`` of a provider's shared slots."""
BREAKER_WAIT_S = 0.005
"""How often a request a ramping circuit holds back (``BUSY``) asks again."""

Enqueue = Callable[[EncodedBatch, float], Awaitable[None]]
TRACED: tuple[DispatchCount, ...] = (
    "duplicates_skipped",
    "retries",
    "breaker_deferred",
    "held_requeued",
    "tokens_removed",
)
"""Counters of a batch that an intent's trace keeps too (besides ``delivery:<platform>:<outcome>``)."""


@dataclass(slots=True)
class _Tally:
    counts: Counter[DispatchCount | DeliveryCounter] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    retry: list[Device] = field(default_factory=list)
    retry_after_s: float = 0.0
    retry_reasons: Counter[str] = field(default_factory=Counter)
    kept_claims: bool = False
    """A send may have happened without an answer (a lost answer, or an unexpected exception): its claim
    is kept, so its retry waits for the lease."""
    held: list[Device] = field(default_factory=list)
    held_for_s: float = 0.0
    deferred: list[Device] = field(default_factory=list)
    deferred_for_s: float = 0.0
    dead_tokens: list[tuple[Device, DeliveryResult]] = field(default_factory=list)
    unsendable: dict[str, list[Device]] = field(default_factory=dict)
    trace: Counter[str] = field(default_factory=Counter)
    """What the intent's trace gets beyond the counts: dead letters by code, retries by reason."""

    def add(self, name: DispatchCount | DeliveryCounter, n: int) -> None:
        self.counts[name] += n

    def claimed(self, platform: Platform, claims: Claims, ended: Final) -> None:
        """What a claim found: devices that ended before, held by another attempt, or ended now."""
        self.add("duplicates_skipped", len(claims.already_done))
        self.add(delivery_counter(platform, ended), len(claims.ended))
        if claims.held:
            self.held += claims.held
            self.held_for_s = max(self.held_for_s, claims.held_for_s)

    def retry_later(self, device: Device, reason: str, retry_after: float | None) -> None:
        self.retry.append(device)
        self.retry_reasons[reason] += 1
        self.trace[f"retry:{reason[:60]}"] += 1
        if retry_after:
            self.retry_after_s = max(self.retry_after_s, retry_after)

    def defer(self, device: Device, wait_s: float) -> None:
        self.deferred.append(device)
        self.deferred_for_s = max(self.deferred_for_s, wait_s)

    def trace_counts(self, platform: Platform) -> Counter[str]:
        """This batch's devices, by what became of them, for ``IntentTraces.delivered``."""
        out = Counter(self.trace)
        for count in DELIVERY_COUNTS:
            out[count] += self.counts.get(delivery_counter(platform, count), 0)
        for name in TRACED:
            out[name] += self.counts.get(name, 0)
        return +out


class _MarkerWrites:
    """Coalesces the marker writes of every batch in hand: final states for answered devices, releases
    for definite non-sends. They go out in bursts (``MARK_FLUSH_SIZE`` devices or ``MARK_FLUSH_S``),
    one Redis round trip each whatever the batches; each device is counted in its batch's tally under
    its final state only if its marker actually moved there."""

    def __init__(self, markers: DeliveryMarkers) -> None:
        self._markers = markers
        self._pending: dict[tuple[str, Final | None], list[tuple[str, _Run]]] = {}
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, run: _Run, device_id: str, state: Final | None) -> None:
        key = (run.batch.intent.intent_id, state)
        entries = self._pending.get(key)
        if entries is None:
            entries = self._pending[key] = []
        entries.append((device_id, run))
        self._size += 1
        if self._size >= MARK_FLUSH_SIZE:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(MARK_FLUSH_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        groups, self._pending, self._size = list(self._pending.items()), {}, 0
        task = asyncio.ensure_future(self._write(groups))
        for run in {run for _, entries in groups for _, run in entries}:
            run.writes.append(task)

    async def _write(self, groups: list[tuple[tuple[str, Final | None], list[tuple[str, _Run]]]]) -> None:
        moved = await self._markers.settle(
            [(intent, state, [d for d, _ in entries]) for (intent, state), entries in groups]
        )
        for ((_, state), entries), flags in zip(groups, moved, strict=True):
            if state is not None:
                runs = Counter(run for (_, run), flag in zip(entries, flags, strict=True) if flag)
                for run, n in runs.items():
                    run.tally.add(delivery_counter(run.platform, state), n)


class _EndpointSlots:
    """Per-endpoint caps on requests in flight, and a pool that the requests of suspect endpoints
    (failures since their last success) share besides: however many endpoints hang, they hold at most
    ``suspect_limit`` shared slots once each has timed out once. An endpoint's cap is given per request
    (one until it has answered once, so a new endpoint that hangs holds one slot, not its full cap).
    Requests past ``slow_after_s`` move aside (up to ``aside_limit``), off the shared slots, keeping their
    endpoint's cap and suspect slot."""

    def __init__(self, suspect_limit: int, aside_limit: int, slow_after_s: float) -> None:
        self._in_use: Counter[str] = Counter()
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._suspects = asyncio.Semaphore(suspect_limit)
        self._aside_free = aside_limit
        self.slow_after_s = slow_after_s

    def step_aside(self) -> bool:
        """Take a place aside for a slow request, if one is free (``come_back`` gives it back)."""
        if self._aside_free <= 0:
            return False
        self._aside_free -= 1
        return True

    def come_back(self, circuit: str, suspect: bool) -> None:
        """A request aside has its answer: its place aside and its endpoint's slots are free."""
        self._aside_free += 1
        self.release(circuit, suspect)

    def busy(self, circuit: str, cap: int, suspect: bool) -> bool:
        return self._in_use[circuit] >= cap or (suspect and self._suspects.locked())

    async def acquire(self, circuit: str, cap: int, suspect: bool) -> None:
        while self._in_use[circuit] >= cap:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(circuit, deque()).append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():  # woken, then cancelled: pass the turn on
                    self._wake(circuit, waiter)
                raise
            finally:
                waiters = self._waiters.get(circuit)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                if waiters is not None and not waiters:
                    del self._waiters[circuit]
        self._in_use[circuit] += 1
        if suspect:
            try:
                await self._suspects.acquire()
            except BaseException:
                self.release(circuit, False)
                raise

    def release(self, circuit: str, suspect: bool) -> None:
        if suspect:
            self._suspects.release()
        self._in_use[circuit] -= 1
        if not self._in_use[circuit]:
            del self._in_use[circuit]
        self._wake(circuit)

    def _wake(self, circuit: str, but: asyncio.Future[None] | None = None) -> None:
        for waiter in self._waiters.get(circuit, ()):
            if waiter is not but and not waiter.done():
                waiter.set_result(None)
                return


class _Run:
    """One batch being delivered: its devices not claimed yet, the claimed ones ready to go, the claims
    it holds (renewed until the run ends), and what became of each device."""

    def __init__(
        self, deliverer: Deliverer, batch: DeliveryBatch, provider: Provider, send: Send, tally: _Tally
    ) -> None:
        self.batch = batch
        self.platform = batch.platform
        self.event_at = batch.intent.event_at.timestamp()
        """When the intent's event happened (epoch seconds): each push's latency is counted from it."""
        self.provider = provider
        self.send = send
        self.tally = tally
        self._marks = deliverer.marks
        self.writes: list[asyncio.Future[None]] = []
        """The marker writes that carry this batch's devices."""
        self._markers = deliverer.markers
        self._breakers = deliverer.breakers
        self._todo = deque(batch.devices)
        self._ready: deque[Device] = deque()
        self._claiming = False
        """A worker is claiming a window (``next_device``); ``_claimed`` is set when it is done."""
        self._claimed = asyncio.Event()
        self._parked: dict[str, deque[Device]] = {}
        self._claimed_once = False
        self.holding: set[str] = set()
        """Devices claimed by this run and not answered yet."""
        self.active = 0
        """This run's workers holding a shared slot: the size of the next claim window."""
        self.aside: set[asyncio.Task[None]] = set()
        """Slow requests that gave their shared slot back (awaited before the run ends)."""

    async def next_device(self) -> Device | None:
        """The next device to send, claimed; None when the batch has none left."""
        while not self._ready:
            if self._claiming:
                # A window being claimed may still bring devices: wait for it rather than leave its
                # devices to the one worker claiming them. Every waiter wakes at once when it is in
                # (or failed: then one of them claims again).
                await self._claimed.wait()
                continue
            if not self._todo:
                return None
            self._claiming = True
            self._claimed.clear()
            try:
                window = self._window(max(MIN_WINDOW, self.active))
                if not window:
                    continue
                claims = await self._markers.claim(self.batch.intent, window, patient=self._claimed_once)
                self._claimed_once = True
                self.tally.claimed(self.platform, claims, "superseded")
                self._ready.extend(claims.claimed)
                self.holding.update(d.device_id for d in claims.claimed)
            finally:
                self._claiming = False
                self._claimed.set()
        return self._ready.popleft()

    def has_work(self) -> bool:
        """Whether the batch still has devices to claim or claimed ones to send."""
        return bool(self._ready or self._todo or self._claiming)

    def _window(self, size: int) -> list[Device]:
        """Up to ``size`` devices to claim; devices whose circuit is open are deferred unclaimed."""
        window: list[Device] = []
        while self._todo and len(window) < size:
            device = self._todo.popleft()
            wait = self._breakers[self.provider.circuit(device)].probe_in()
            if wait > 0:
                self.tally.defer(device, wait)
            else:
                window.append(device)
        return window

    def put_aside(self, attempt: asyncio.Task[None], done: Callable[[], None]) -> None:
        self.aside.add(attempt)
        attempt.add_done_callback(lambda _: done())

    def park(self, device: Device, circuit: str) -> None:
        """Set a claimed device aside until its endpoint has room."""
        self._parked.setdefault(circuit, deque()).append(device)

    def unparked(self, endpoints: _EndpointSlots | None) -> tuple[Device, str] | None:
        """A parked device whose endpoint has room (any parked device if ``endpoints`` is None)."""
        for circuit, devices in self._parked.items():
            if endpoints is None or not endpoints.busy(circuit, *self.gates(circuit)):
                device = devices.popleft()
                if not devices:
                    del self._parked[circuit]
                return device, circuit
        return None

    def gates(self, circuit: str) -> tuple[int, bool]:
        """An endpoint's cap on requests in flight (one until it has answered once), and whether it
        failed since its last success (its requests then share the suspects' pool too)."""
        breaker = self._breakers[circuit]
        cap = self.provider.endpoint_concurrency or 1
        return (cap if breaker.proven else 1), breaker.failures > 0

    def defer(self, device: Device, wait_s: float) -> None:
        self.tally.defer(device, wait_s)
        self.release(device)

    def release(self, device: Device) -> None:
        self.holding.discard(device.device_id)
        self._marks.add(self, device.device_id, None)

    def finish(self, device: Device, state: Final) -> None:
        self.holding.discard(device.device_id)
        self._marks.add(self, device.device_id, state)

    async def written(self) -> None:
        """Once every marker write of this batch landed (raises if one could not)."""
        self._marks.flush()
        await asyncio.gather(*self.writes)

    def keep_claim(self, device: Device) -> None:
        """Stop renewing a claim whose send may have happened: it lapses after one lease."""
        self.holding.discard(device.device_id)

    async def renew_claims(self) -> None:
        """Renew the leases of the claims held, three times a lease, until cancelled."""
        every_s = self._markers.lease_s / 3
        while True:
            await asyncio.sleep(every_s)
            try:
                await self._markers.renew(self.batch.intent.intent_id, list(self.holding))
            except Exception as exc:  # the sends go on; a claim that lapses is at worst sent again
                log.warning("could not renew %d claims (%s)", len(self.holding), type(exc).__name__)


class Deliverer:
    """Runs batches through one provider per platform; lives in the event loop it was made in."""

    def __init__(self, settings: Settings, redis: Redis, providers: dict[str, Provider], enqueue: Enqueue) -> None:
        self._settings = settings
        self._keys = Keys(settings.namespace)
        self._redis = redis
        self._providers = providers
        self._enqueue = enqueue
        self.markers = DeliveryMarkers(
            redis, self._keys, lease_s=settings.claim_lease_s, sent_ttl_s=settings.sent_marker_ttl_s
        )
        self.marks = _MarkerWrites(self.markers)
        self._store = PreferenceStore(redis, self._keys)
        self._live = LiveRegistry(
            redis, self._keys, buckets=settings.preference_buckets, ttl_s=settings.live_registration_ttl_s
        )
        self.breakers = Breakers(settings.breaker_failure_threshold, settings.breaker_open_s)
        self.breaker_board = BreakerBoard(redis, self._keys)
        rates = {
            "fcm": settings.fcm_rate_per_s,
            "apns": settings.apns_rate_per_s,
            "webhook": settings.webhook_rate_per_s,
        }
        # Per platform, paced at its rate (0: unpaced) and slowed by quota refusals; the lanes share them.
        self.buckets = {platform: TokenBucket(rate) for platform, rate in rates.items()}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._endpoint_slots: dict[str, _EndpointSlots] = {}
        self.counters = PipelineCounters(redis, self._keys)
        self.traces = self.counters.traces(settings.sent_marker_ttl_s)

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()

    async def dead_letter(self, entry: DeadLetter) -> None:
        """Keep a batch, a device or an unreadable message in the dead letters, with why."""
        await deadletters.write(self._redis, self._keys, entry)

    async def _dead_letter_devices(
        self, batch: DeliveryBatch, devices: Sequence[Device], code: DeadLetterCode, detail: str
    ) -> None:
        dead = batch.model_copy(update={"devices": tuple(devices)})
        entry = DeadLetter(
            kind=DeadLetterKind.BATCH,
            code=code,
            detail=detail,
            platform=batch.platform,
            payload=dead.to_json().decode(),
            batch_id=batch.batch_id,
            intent_id=batch.intent.intent_id,
            devices=len(devices),
        )
        await self.dead_letter(entry)

    async def process(self, batch: DeliveryBatch) -> None:
        tally = _Tally()
        platform = batch.platform
        await self.breaker_board.sync(self.breakers)
        if batch.intent.expired():
            claims = await self.markers.claim(batch.intent, batch.devices, final="expired")
            tally.claimed(platform, claims, "expired")
        else:
            await self._deliver(batch, tally)
        await self._follow_up(batch, tally)
        if tally.dead_tokens:
            removed, kept = await prune_tokens(self._store, tally.dead_tokens, self._live)
            tally.add("tokens_removed", removed)
            tally.add("tokens_kept_reregistered", kept)
        tally.add("batches_done", 1)
        await self.breaker_board.publish(self.breakers)
        await self.traces.delivered(batch.intent.intent_id, platform, tally.trace_counts(platform), utcnow())
        await self.counters.add(dispatch_counts(tally.counts), tally.latencies_ms)

    async def _deliver(self, batch: DeliveryBatch, tally: _Tally) -> None:
        provider = self._providers[batch.platform]
        try:
            send = await provider.prepare(batch)
        except ProviderError as exc:  # nothing claimed, nothing sent: the whole batch tries again
            self.breakers[provider.circuit(batch.devices[0])].record(ok=False)
            retry_after = exc.retry_after if isinstance(exc, ProviderRateLimited) else None
            for device in batch.devices:
                tally.retry_later(device, type(exc).__name__, retry_after)
            return
        run = _Run(self, batch, provider, send, tally)
        renewing = asyncio.create_task(run.renew_claims())
        limit = min(len(batch.devices), provider.concurrency)
        workers: list[asyncio.Task[None]] = []
        staffing: asyncio.Task[None] | None = None
        try:
            if self._endpoint_slots_of(provider) is None:
                staffing = asyncio.create_task(self._staff(run, limit, workers))
                await asyncio.wait((staffing,))
                if not staffing.cancelled() and (failed := staffing.exception()) is not None:
                    raise failed
            else:
                workers += [asyncio.create_task(self._work(run)) for _ in range(limit)]
            await _all(workers)
            if run.aside:
                await _all(list(run.aside))
        finally:
            if staffing is not None and not staffing.done():
                staffing.cancel()
            for worker in workers:
                worker.cancel()  # done already but on the way out through an error or a cancellation
            await asyncio.gather(*workers, *([staffing] if staffing is not None else []), return_exceptions=True)
            for attempt in run.aside:
                attempt.cancel()
            await asyncio.gather(*run.aside, return_exceptions=True)
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await run.written()

    def _platform_slots(self, provider: Provider) -> asyncio.Semaphore:
        slots = self._slots.get(provider.platform)
        if slots is None:
            slots = self._slots[provider.platform] = asyncio.Semaphore(provider.concurrency)
        return slots

    def _endpoint_slots_of(self, provider: Provider) -> _EndpointSlots | None:
        if provider.endpoint_concurrency is None:
            return None
        slots = self._endpoint_slots.get(provider.platform)
        if slots is None:
            suspects = max(1, provider.concurrency // SUSPECT_SHARE)
            aside, slow_s = self._settings.webhook_slow_concurrency, self._settings.webhook_slow_after_s
            slots = self._endpoint_slots[provider.platform] = _EndpointSlots(suspects, aside, slow_s)
        return slots

    async def _staff(self, run: _Run, limit: int, workers: list[asyncio.Task[None]]) -> None:
        """Start a batch's workers (FCM, APNs) one shared slot at a time, as slots come free, up to
        ``limit``: each holds its slot until the batch has no device left (``_serve``). While the slots
        are taken, the batch waits for one in one place, not with a worker task per slot it might get;
        a worker that stops (the batch done, or a failure) stops the staffing too.

        That stop cancels the wait for a slot once, and the staffing then returns: a cancellation it
        let out would stay on its task with a traceback holding this frame, whose ``stopped`` holds
        the task, a cycle that kept each batch (500 decoded devices) alive until a full collection.
        A cancellation from anywhere else goes on out."""
        slots = self._platform_slots(run.provider)
        staffing = asyncio.current_task()
        assert staffing is not None
        stop = [False]

        def stopped(worker: asyncio.Task[None]) -> None:
            run.active -= 1
            slots.release()  # also for a worker cancelled before it ran: the slot was taken for it
            if not stop[0]:  # the batch has no device left for another worker, or it failed
                stop[0] = True
                staffing.cancel()

        while len(workers) < limit and run.has_work():
            try:
                await slots.acquire()
            except asyncio.CancelledError:
                if stop[0] and staffing.uncancel() == 0:
                    return
                raise
            if not run.has_work():
                slots.release()
                return
            run.active += 1
            worker = asyncio.create_task(self._serve(run))
            worker.add_done_callback(stopped)
            workers.append(worker)

    async def _serve(self, run: _Run) -> None:
        """One of a batch's workers holding a shared slot (``_staff``): its devices one after the
        other until it has none left."""
        while (device := await run.next_device()) is not None:
            await self._attempt(run, device, run.provider.circuit(device))

    async def _work(self, run: _Run) -> None:
        """One of a batch's workers: a shared slot, a claimed device, its endpoint's cap, then the send;
        until the batch has no device left. A device whose endpoint is at its cap is parked while the
        worker goes on with others; parked devices go once their endpoint has room, or last, then
        waiting for it without holding a shared slot."""
        slots = self._platform_slots(run.provider)
        endpoints = self._endpoint_slots_of(run.provider)
        assert endpoints is not None, "FCM and APNs workers are started by _staff"
        while True:
            await slots.acquire()
            run.active += 1
            holding = True
            try:
                last = False
                parked = run.unparked(endpoints)
                if parked is None:
                    device = await run.next_device()
                    if device is None:
                        parked, last = run.unparked(None), True
                        if parked is None:
                            return
                if parked is not None:
                    device, circuit = parked
                else:
                    assert device is not None
                    circuit = run.provider.circuit(device)
                cap, suspect = run.gates(circuit)
                if parked is None and endpoints.busy(circuit, cap, suspect):
                    run.park(device, circuit)
                    continue
                if last and endpoints.busy(circuit, cap, suspect):  # nothing else to do: wait, not on a shared slot
                    run.active -= 1
                    slots.release()
                    holding = False
                    await endpoints.acquire(circuit, cap, suspect)
                    try:
                        await slots.acquire()
                    except BaseException:
                        endpoints.release(circuit, suspect)
                        raise
                    run.active += 1
                    holding = True
                else:
                    await endpoints.acquire(circuit, cap, suspect)
                attempt = asyncio.ensure_future(self._attempt(run, device, circuit))
                try:
                    await asyncio.wait((attempt,), timeout=endpoints.slow_after_s)
                except BaseException:
                    attempt.cancel()
                    endpoints.release(circuit, suspect)
                    raise
                if not attempt.done() and endpoints.step_aside():
                    # Slow (hanging?): it goes on aside, this worker and its shared slot go on with others.
                    run.put_aside(attempt, functools.partial(endpoints.come_back, circuit, suspect))
                    continue
                try:
                    await attempt
                finally:
                    endpoints.release(circuit, suspect)
            finally:
                if holding:
                    run.active -= 1
                    slots.release()

    async def _attempt(self, run: _Run, device: Device, circuit: str) -> None:
        """Pace, ask the device's breaker, send, and settle what became of the device."""
        bucket = self.buckets[run.platform]
        sent_at = await bucket.take()
        breaker = self.breakers[circuit]
        while (wait := breaker.admit()) != 0:
            if wait != BUSY:
                run.defer(device, wait)
                return
            await asyncio.sleep(BREAKER_WAIT_S)
        try:
            result = await run.send(device)
        except ProviderError as exc:
            run.release(device)
            retry_after = exc.retry_after if isinstance(exc, ProviderRateLimited) else None
            if isinstance(exc, ProviderRateLimited):  # the provider working, asking us to slow down: pacing's
                breaker.abstain()
                bucket.refused(sent_at, retry_after)
            else:
                breaker.record(ok=False)
            run.tally.retry_later(device, type(exc).__name__, retry_after)
            return
        except Exception as exc:
            # Whether it went out is unknown: keep the claim (no second send before its lease ends), and
            # spend an attempt, so a provider that always crashes ends in the dead letters.
            breaker.record(ok=False)
            log.exception("provider %s crashed on batch %s", run.platform, run.batch.batch_id)
            run.keep_claim(device)
            run.tally.kept_claims = True
            run.tally.retry_later(device, f"unexpected_error: {type(exc).__name__}", None)
            return
        except BaseException:
            breaker.abstain()
            raise
        if quota_refused(run.platform, result):  # the provider working, asking us to slow down: pacing's
            bucket.refused(sent_at, result.retry_after)
            breaker.abstain()
            run.release(device)
            run.tally.retry_later(device, result.reason or "failed", result.retry_after)
            return
        if result.outcome == "sent":
            bucket.accepted()
        self._settle(run, device, result, breaker)

    def _settle(self, run: _Run, device: Device, result: DeliveryResult, breaker: CircuitBreaker) -> None:
        tally = run.tally
        if result.message_error:
            # Nothing reached the provider and no retry fixes the message: dead letters, breaker untouched.
            breaker.abstain()
            run.release(device)
            tally.unsendable.setdefault(result.reason or "message_error", []).append(device)
            return
        if result.refused:  # never sent (an address the SSRF guard refuses): the endpoint said nothing
            breaker.abstain()
            run.finish(device, "failed")
            return
        retry = result.outcome == "failed" and result.retryable
        breaker.record(ok=not retry)
        if retry:
            if result.maybe_sent:  # it may have gone out: no other copy may send it before the lease ends
                run.keep_claim(device)
                tally.kept_claims = True
            else:
                run.release(device)
            tally.retry_later(device, result.reason or "failed", result.retry_after)
        elif result.outcome == "sent":
            run.finish(device, "sent")
            tally.latencies_ms.append((time.time() - run.event_at) * 1000)
        elif result.outcome == "invalid_token":
            run.finish(device, "invalid_token")
            tally.dead_tokens.append((device, result))
        else:
            run.finish(device, "expired" if result.outcome == "expired" else "failed")

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff with full jitter around the nominal delay."""
        nominal = min(self._settings.retry_max_delay_s, self._settings.retry_base_delay_s * 2 ** (attempt - 1))
        return float(nominal * random.uniform(0.5, 1.5))

    async def _requeue(self, batch: DeliveryBatch, devices: Sequence[Device], delay_s: float, **update: int) -> None:
        again = batch.model_copy(update={"devices": tuple(devices), **update})
        await self._enqueue(again.encode(), delay_s)

    async def _follow_up(self, batch: DeliveryBatch, tally: _Tally) -> None:
        for reason, devices in tally.unsendable.items():
            await self._dead_letter_devices(batch, devices, DeadLetterCode.MESSAGE_ERROR, reason)
            tally.trace[f"dead_lettered:{DeadLetterCode.MESSAGE_ERROR}"] += len(devices)
            tally.add("dead_letters", len(devices))
            tally.add(delivery_counter(batch.platform, "dead_lettered"), len(devices))
            log.warning("batch %s dead-lettered %d devices: %s", batch.batch_id, len(devices), reason)
        if tally.held:
            # Recheck soon: a live holder usually finishes well before its lease runs out.
            await self._requeue(batch, tally.held, min(tally.held_for_s, HELD_RECHECK_S) + 0.05)
            tally.add("batches_published", 1)
            tally.add("held_requeued", len(tally.held))
        if tally.deferred:
            # An open circuit is not the batch's fault: same attempt, after the circuit's wait.
            await self._requeue(batch, tally.deferred, tally.deferred_for_s * random.uniform(1.0, 1.2) + 0.01)
            tally.add("batches_published", 1)
            tally.add("breaker_deferred", len(tally.deferred))
        if not tally.retry:
            return
        reason = ", ".join(f"{r} x{n}" for r, n in tally.retry_reasons.most_common())
        if batch.attempt >= self._settings.delivery_max_attempts:
            detail = f"attempts exhausted ({batch.attempt}): {reason}"
            await self._dead_letter_devices(batch, tally.retry, DeadLetterCode.ATTEMPTS_EXHAUSTED, detail)
            tally.trace[f"dead_lettered:{DeadLetterCode.ATTEMPTS_EXHAUSTED}"] += len(tally.retry)
            tally.add("dead_letters", len(tally.retry))
            tally.add(delivery_counter(batch.platform, "dead_lettered"), len(tally.retry))
            log.warning("batch %s dead-lettered %d devices: %s", batch.batch_id, len(tally.retry), reason)
            return
        delay = max(tally.retry_after_s, self.backoff_s(batch.attempt))
        if tally.kept_claims:  # a kept claim blocks the next attempt until its lease ends
            delay = max(delay, float(self.markers.lease_s))
        await self._requeue(batch, tally.retry, delay, attempt=batch.attempt + 1)
        tally.add("batches_published", 1)
        tally.add("retries", len(tally.retry))


async def _all(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; on the first failure cancel the others and raise it (not as a group, so
    ``redis_unavailable`` still recognizes a Redis error)."""
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failed = next((t for t in done if not t.cancelled() and t.exception() is not None), None)
    if failed is None:
        return
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    raise failed.exception()  # type: ignore[misc]
