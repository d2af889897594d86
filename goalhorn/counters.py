"""Pipeline counters shared by every stage and every process, kept in one Redis hash; and the
per-intent traces (:class:`IntentTraces`) that ``goalhorn trace`` reads.

Each process also exposes what its own stages counted as ``goalhorn_pipeline_total{counter=...}`` on
its ``/metrics``. They are what ``goalhorn demo`` summarizes and what the pipeline waits on to know it is idle:
every batch published is eventually counted done (delivered, retried as a new batch, or dead-lettered).
Latencies from score change to delivery are kept as a capped list of milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NewType, get_args

from prometheus_client import Counter

from goalhorn.keys import PLATFORMS, Keys, Platform
from goalhorn.models import DELIVERY_COUNTS, DeliveryCount, DispatchCount
from goalhorn.redis_client import Redis

DeliveryCounter = NewType("DeliveryCounter", str)
"""The name of a ``delivery:<platform>:<count>`` counter (only ``delivery_counter`` makes one)."""


def delivery_counter(platform: Platform, count: DeliveryCount) -> DeliveryCounter:
    """The shared counter of a provider's devices that ended in ``count``."""
    return DeliveryCounter(f"delivery:{platform}:{count}")


def dispatch_counts(counts: Mapping[DispatchCount | DeliveryCounter, int]) -> dict[str, int]:
    """Counts of the delivery side, their names checked against the closed set, for ``add``."""
    return {str(name): n for name, n in counts.items()}


LATENCY_SAMPLES = 200_000
StageLatency = Literal["ingest", "fanout"]
"""Stages whose own latency is sampled, besides score change to delivery: ``ingest`` (score change to
its intent), ``fanout`` (intent to the end of its expansion)."""
STAGE_LATENCY_SAMPLES = 10_000
TRACE_TTL_S = 72 * 3600
"""How long an intent's trace is kept after its last update (as long as its sent markers, by default)."""

PROCESS_COUNTS = Counter(
    "goalhorn_pipeline",
    "What this process's stages counted (the same names as the shared pipeline counters in Redis).",
    ["counter"],
)


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    counts: dict[str, int]
    latencies_ms: list[float]

    def get(self, name: str) -> int:
        return self.counts.get(name, 0)

    def deliveries(self) -> dict[tuple[str, str], int]:
        """``{(platform, count): n}`` of the ``delivery_counter`` counters that are not zero."""
        out: dict[tuple[str, str], int] = {}
        for platform in PLATFORMS:
            for count in DELIVERY_COUNTS:
                value = self.counts.get(delivery_counter(platform, count), 0)
                if value:
                    out[(platform, count)] = value
        return out

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the latencies, or None when there are none."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1]


class PipelineCounters:
    """Increment and read the shared counters."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def traces(self, ttl_s: int = TRACE_TTL_S) -> IntentTraces:
        """The per-intent traces kept beside these counters."""
        return IntentTraces(self._redis, self._keys, ttl_s)

    async def add(self, counts: Mapping[str, int], latencies_ms: Iterable[float] = ()) -> None:
        samples = [f"{ms:.3f}" for ms in latencies_ms]
        pipe = self._redis.pipeline(transaction=False)
        for name, value in counts.items():
            if value:
                pipe.hincrby(self._keys.stats(), name, value)
        if samples:
            pipe.rpush(self._keys.latencies(), *samples)
            pipe.ltrim(self._keys.latencies(), -LATENCY_SAMPLES, -1)
        await pipe.execute()
        for name, value in counts.items():
            if value > 0:  # once Redis took them, so a retried add is not counted twice here either
                PROCESS_COUNTS.labels(name).inc(value)

    async def add_stage_latencies(self, samples: Mapping[StageLatency, float]) -> None:
        """One latency sample (milliseconds) per stage, each list capped at ``STAGE_LATENCY_SAMPLES``."""
        pipe = self._redis.pipeline(transaction=False)
        for stage, ms in samples.items():
            pipe.rpush(self._keys.stage_latencies(stage), f"{ms:.3f}")
            pipe.ltrim(self._keys.stage_latencies(stage), -STAGE_LATENCY_SAMPLES, -1)
        await pipe.execute()

    async def recent_latencies(self, stage: StageLatency | None, newest: int) -> list[float]:
        """The newest samples of a stage, or of score change to delivery (``None``)."""
        key = self._keys.latencies() if stage is None else self._keys.stage_latencies(stage)
        return [float(v) for v in await self._redis.lrange(key, -newest, -1)]

    async def snapshot(self) -> CounterSnapshot:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._keys.stats())
        pipe.lrange(self._keys.latencies(), 0, -1)
        raw_counts, raw_latencies = await pipe.execute()
        counts = {k.decode(): int(v) for k, v in raw_counts.items()}
        return CounterSnapshot(counts, [float(v) for v in raw_latencies])

    async def reset(self) -> None:
        stages = [self._keys.stage_latencies(stage) for stage in get_args(StageLatency)]
        await self._redis.delete(self._keys.stats(), self._keys.latencies(), *stages)


class IntentTraces:
    """What became of each intent, for ``goalhorn trace``: one HASH per intent (``Keys.trace``).

    The fanout writes its expansion figures (``expand:<name>``, replaced when an intent is expanded
    again) and times; each delivered batch adds its devices' outcomes per provider
    (``<platform>:<outcome>``, ``<platform>:dead_lettered:<code>``...) and the times of the first and
    last batch. ``Keys.event_intents`` lists the intents of each event."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int = TRACE_TTL_S) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s

    async def expanded(
        self, intent_id: str, event_id: str, head: Mapping[str, str], figures: Mapping[str, int]
    ) -> None:
        key = self._keys.trace(intent_id)
        mapping: dict[str, str | int] = {**head, **{f"expand:{name}": n for name, n in figures.items()}}
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(key, self._ttl_s)
        pipe.sadd(self._keys.event_intents(event_id), intent_id)
        pipe.expire(self._keys.event_intents(event_id), self._ttl_s)
        await pipe.execute()

    async def delivered(self, intent_id: str, platform: str, counts: Mapping[str, int], at: datetime) -> None:
        key = self._keys.trace(intent_id)
        pipe = self._redis.pipeline(transaction=False)
        for name, n in counts.items():
            if n:
                pipe.hincrby(key, f"{platform}:{name}", n)
        stamp = at.isoformat()
        pipe.hsetnx(key, f"{platform}:first_at", stamp)
        pipe.hset(key, f"{platform}:last_at", stamp)
        pipe.expire(key, self._ttl_s)
        await pipe.execute()

    async def read(self, intent_id: str) -> dict[str, str]:
        raw = await self._redis.hgetall(self._keys.trace(intent_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def intents_of(self, event_id: str) -> list[str]:
        return sorted(_text(m) for m in await self._redis.smembers(self._keys.event_intents(event_id)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
