"""Delivering one batch: expiry, claims, breakers, pacing, sending, and what happens to each device after.

Every device of a batch ends in exactly one place: a terminal result counted under
``delivery:<platform>:<outcome>``, a new batch attempt (retryable failures; devices held by another
attempt's claim; devices deferred by an open circuit breaker, without spending an attempt), or the
dead letters (attempts exhausted, or a message that cannot be built for the device: a template error
is neither the device's nor the provider's fault, so it is not retried and no breaker counts it).
Devices are sent concurrently, each on its own, and marked sent as soon as the provider accepts it
(marks are coalesced into one Redis call per burst), so a crash part way through leaves everything
accepted so far recorded.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from goalhorn.counters import DeliveryCounter, PipelineCounters, delivery_counter, dispatch_counts
from goalhorn.dispatch import deadletters
from goalhorn.dispatch.breaker import Breakers
from goalhorn.dispatch.breaker_board import BreakerBoard
from goalhorn.dispatch.hygiene import prune_tokens
from goalhorn.dispatch.markers import DeliveryMarkers
from goalhorn.dispatch.pacing import TokenBucket
from goalhorn.errors import ProviderError, ProviderRateLimited
from goalhorn.keys import Keys, Platform
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
from goalhorn.providers import Provider
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

HELD_RECHECK_S = 2.0
MARK_FLUSH_S = 0.005
MARK_FLUSH_SIZE = 100

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

    def trace_counts(self, platform: Platform) -> Counter[str]:
        """This batch's devices, by what became of them, for ``IntentTraces.delivered``."""
        out = Counter(self.trace)
        for count in DELIVERY_COUNTS:
            out[count] += self.counts.get(delivery_counter(platform, count), 0)
        for name in TRACED:
            out[name] += self.counts.get(name, 0)
        return +out


class _MarkerWrites:
    """Coalesces marker writes: ``sent`` for accepted devices, releases for definite failures.

    They go out in bursts (``MARK_FLUSH_SIZE`` devices or ``MARK_FLUSH_S``), one Redis call each.
    """

    def __init__(self, markers: DeliveryMarkers, intent_id: str) -> None:
        self._markers = markers
        self._intent_id = intent_id
        self._sent: list[str] = []
        self._released: list[str] = []
        self._writes: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def sent(self, device_id: str) -> None:
        self._sent.append(device_id)
        self._soon()

    def release(self, device_id: str) -> None:
        self._released.append(device_id)
        self._soon()

    def _soon(self) -> None:
        if len(self._sent) + len(self._released) >= MARK_FLUSH_SIZE:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(MARK_FLUSH_S, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for ids, write in ((self._sent, self._markers.mark_sent), (self._released, self._markers.release)):
            if ids:
                task = asyncio.ensure_future(write(self._intent_id, list(ids)))
                ids.clear()
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)

    async def close(self) -> None:
        self._flush()
        while self._writes:
            await asyncio.gather(*self._writes)


class Deliverer:
    """Runs batches through one provider per platform; lives in the event loop it was made in."""

    def __init__(self, settings: Settings, redis: Redis, providers: dict[str, Provider], enqueue: Enqueue) -> None:
        self._settings = settings
        self._keys = Keys(settings.namespace)
        self._redis = redis
        self._providers = providers
        self._enqueue = enqueue
        self._markers = DeliveryMarkers(
            redis, self._keys, lease_s=settings.claim_lease_s, sent_ttl_s=settings.sent_marker_ttl_s
        )
        self._store = PreferenceStore(redis, self._keys)
        self.breakers = Breakers(settings.breaker_failure_threshold, settings.breaker_open_s)
        self.breaker_board = BreakerBoard(redis, self._keys)
        rates = {
            "fcm": settings.fcm_rate_per_s,
            "apns": settings.apns_rate_per_s,
            "webhook": settings.webhook_rate_per_s,
        }
        self._buckets = {platform: TokenBucket(rate) for platform, rate in rates.items() if rate > 0}
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
            tally.add(delivery_counter(platform, "expired"), len(batch.devices))
        else:
            claims = await self._markers.claim(batch.intent.intent_id, batch.devices)
            tally.add("duplicates_skipped", len(claims.already_sent))
            tally.held, tally.held_for_s = claims.held, claims.held_for_s
            marks = _MarkerWrites(self._markers, batch.intent.intent_id)
            try:
                await asyncio.gather(*(self._send_one(batch, device, tally, marks) for device in claims.claimed))
            finally:
                await marks.close()
            deferred_ids = [d.device_id for d in tally.deferred]
            await self._markers.release(batch.intent.intent_id, deferred_ids)
        await self._follow_up(batch, tally)
        if tally.dead_tokens:
            removed, kept = await prune_tokens(self._store, tally.dead_tokens)
            tally.add("tokens_removed", removed)
            tally.add("tokens_kept_reregistered", kept)
        tally.add("batches_done", 1)
        await self.breaker_board.publish(self.breakers)
        await self.traces.delivered(batch.intent.intent_id, platform, tally.trace_counts(platform), utcnow())
        await self.counters.add(dispatch_counts(tally.counts), tally.latencies_ms)

    async def _send_one(self, batch: DeliveryBatch, device: Device, tally: _Tally, marks: _MarkerWrites) -> None:
        provider = self._providers[batch.platform]
        breaker = self.breakers[provider.circuit(device)]
        wait = breaker.admit()
        if wait > 0:
            tally.deferred.append(device)
            tally.deferred_for_s = max(tally.deferred_for_s, wait)
            return
        bucket = self._buckets.get(batch.platform)
        if bucket is not None:
            await bucket.take()
        part = batch.model_copy(update={"devices": (device,)})
        try:
            (result,) = await provider.send(part)
        except ProviderError as exc:
            breaker.record(ok=False)
            marks.release(device.device_id)
            retry_after = exc.retry_after if isinstance(exc, ProviderRateLimited) else None
            self._schedule_retry(tally, device, type(exc).__name__, retry_after)
            return
        except Exception:
            # Unknown whether it went out: keep the claim, retry once its lease ends.
            breaker.record(ok=False)
            log.exception("provider %s crashed on batch %s", batch.platform, batch.batch_id)
            tally.held.append(device)
            tally.held_for_s = max(tally.held_for_s, float(self._settings.claim_lease_s))
            return
        if result.message_error:
            # Nothing reached the provider and no retry fixes the message: dead letters, breaker untouched.
            breaker.abstain()
            marks.release(device.device_id)
            tally.unsendable.setdefault(result.reason or "message_error", []).append(device)
            return
        breaker.record(ok=not (result.outcome == "failed" and result.retryable))
        if result.outcome == "sent":
            marks.sent(device.device_id)
            tally.latencies_ms.append((utcnow() - batch.intent.event_at).total_seconds() * 1000)
        else:
            marks.release(device.device_id)
        if result.outcome == "failed" and result.retryable:
            self._schedule_retry(tally, device, result.reason or "failed", result.retry_after)
            return
        if result.outcome == "invalid_token":
            tally.dead_tokens.append((device, result))
        tally.add(delivery_counter(batch.platform, result.outcome), 1)

    @staticmethod
    def _schedule_retry(tally: _Tally, device: Device, reason: str, retry_after: float | None) -> None:
        tally.retry.append(device)
        tally.retry_reasons[reason] += 1
        tally.trace[f"retry:{reason[:60]}"] += 1
        if retry_after:
            tally.retry_after_s = max(tally.retry_after_s, retry_after)

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
        await self._requeue(batch, tally.retry, delay, attempt=batch.attempt + 1)
        tally.add("batches_published", 1)
        tally.add("retries", len(tally.retry))
