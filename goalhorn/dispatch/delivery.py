"""Delivering one batch: expiry, claims, sending in slices, and what happens to each device after.

Every device of a batch ends in exactly one place: a terminal result counted under
``delivery:<platform>:<outcome>``, a new batch attempt (retryable failures, devices held by another
attempt's claim), or the dead letters (attempts exhausted). Slices of a batch are sent concurrently
and marked sent as each completes, so a crash part way through leaves the finished slices recorded.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from goalhorn.counters import PipelineCounters
from goalhorn.dispatch.markers import DeliveryMarkers
from goalhorn.errors import ProviderError, ProviderRateLimited
from goalhorn.keys import Keys
from goalhorn.models import DeliveryBatch, Device, utcnow
from goalhorn.providers import Provider
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

HELD_RECHECK_S = 2.0

Enqueue = Callable[[DeliveryBatch, float], Awaitable[None]]


@dataclass(slots=True)
class _Tally:
    counts: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    retry: list[Device] = field(default_factory=list)
    retry_after_s: float = 0.0
    retry_reasons: Counter[str] = field(default_factory=Counter)
    held: list[Device] = field(default_factory=list)
    held_for_s: float = 0.0


class Deliverer:
    """Runs batches through one provider per platform; lives in the event loop it was made in."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        providers: dict[str, Provider],
        enqueue: Enqueue,
        *,
        slice_size: int = 100,
    ) -> None:
        self._settings = settings
        self._keys = Keys(settings.namespace)
        self._redis = redis
        self._providers = providers
        self._enqueue = enqueue
        self._slice_size = slice_size
        self._markers = DeliveryMarkers(
            redis, self._keys, lease_s=settings.claim_lease_s, sent_ttl_s=settings.sent_marker_ttl_s
        )
        self.counters = PipelineCounters(redis, self._keys)

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()

    async def quarantine(self, payload: str, reason: str) -> None:
        """Keep an unreadable batch message in the dead letters, with why."""
        await self._redis.xadd(
            self._keys.dead_letters(), {"batch": payload, "reason": reason}, maxlen=100_000, approximate=True
        )

    async def process(self, batch: DeliveryBatch) -> None:
        tally = _Tally()
        platform = batch.platform
        if batch.intent.expired():
            tally.counts[f"delivery:{platform}:expired"] += len(batch.devices)
        else:
            claims = await self._markers.claim(batch.intent.intent_id, batch.devices)
            tally.counts["duplicates_skipped"] += len(claims.already_sent)
            tally.held, tally.held_for_s = claims.held, claims.held_for_s
            slices = [claims.claimed[i : i + self._slice_size] for i in range(0, len(claims.claimed), self._slice_size)]
            await asyncio.gather(*(self._send_slice(batch, devices, tally) for devices in slices))
        await self._follow_up(batch, tally)
        tally.counts["batches_done"] += 1
        await self.counters.add(tally.counts, tally.latencies_ms)

    async def _send_slice(self, batch: DeliveryBatch, devices: Sequence[Device], tally: _Tally) -> None:
        intent_id = batch.intent.intent_id
        part = batch.model_copy(update={"devices": tuple(devices)})
        try:
            results = await self._providers[batch.platform].send(part)
        except ProviderError as exc:
            await self._markers.release(intent_id, [d.device_id for d in devices])
            retry_after = exc.retry_after if isinstance(exc, ProviderRateLimited) else None
            self._schedule_retry(tally, devices, type(exc).__name__, retry_after)
            return
        except Exception:
            # Unknown whether anything went out: keep the claims, retry once their lease ends.
            log.exception("provider %s crashed on batch %s", batch.platform, batch.batch_id)
            tally.held.extend(devices)
            tally.held_for_s = max(tally.held_for_s, float(self._settings.claim_lease_s))
            return
        by_id = {d.device_id: d for d in devices}
        sent_ids = [r.device_id for r in results if r.outcome == "sent"]
        await self._markers.mark_sent(intent_id, sent_ids)
        await self._markers.release(intent_id, [r.device_id for r in results if r.outcome != "sent"])
        latency = (utcnow() - batch.intent.event_at).total_seconds() * 1000
        tally.latencies_ms.extend(latency for _ in sent_ids)
        for result in results:
            if result.outcome == "failed" and result.retryable:
                self._schedule_retry(tally, [by_id[result.device_id]], result.reason or "failed", result.retry_after)
            else:
                tally.counts[f"delivery:{batch.platform}:{result.outcome}"] += 1

    @staticmethod
    def _schedule_retry(tally: _Tally, devices: Sequence[Device], reason: str, retry_after: float | None) -> None:
        tally.retry.extend(devices)
        tally.retry_reasons[reason] += len(devices)
        if retry_after:
            tally.retry_after_s = max(tally.retry_after_s, retry_after)

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff with full jitter around the nominal delay."""
        nominal = min(self._settings.retry_max_delay_s, self._settings.retry_base_delay_s * 2 ** (attempt - 1))
        return float(nominal * random.uniform(0.5, 1.5))

    async def _follow_up(self, batch: DeliveryBatch, tally: _Tally) -> None:
        if tally.held:
            held = batch.model_copy(update={"devices": tuple(tally.held)})
            # Recheck soon: a live holder usually finishes well before its lease runs out.
            await self._enqueue(held, min(tally.held_for_s, HELD_RECHECK_S) + 0.05)
            tally.counts["batches_published"] += 1
            tally.counts["held_requeued"] += len(tally.held)
        if not tally.retry:
            return
        reason = ", ".join(f"{r} x{n}" for r, n in tally.retry_reasons.most_common())
        if batch.attempt >= self._settings.delivery_max_attempts:
            dead = batch.model_copy(update={"devices": tuple(tally.retry)})
            await self.quarantine(dead.to_json().decode(), f"attempts exhausted ({batch.attempt}): {reason}")
            tally.counts["dead_letters"] += len(tally.retry)
            tally.counts[f"delivery:{batch.platform}:dead_lettered"] += len(tally.retry)
            log.warning("batch %s dead-lettered %d devices: %s", batch.batch_id, len(tally.retry), reason)
            return
        again = batch.model_copy(update={"devices": tuple(tally.retry), "attempt": batch.attempt + 1})
        await self._enqueue(again, max(tally.retry_after_s, self.backoff_s(batch.attempt)))
        tally.counts["batches_published"] += 1
        tally.counts["retries"] += len(tally.retry)
