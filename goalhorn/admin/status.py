"""One view of a match night for ``goalhorn status``: per-stage throughput and latency, queue depths,
open breakers, paused providers, recent dead letters and the oldest live game state.

Throughput is the change of the shared pipeline counters over a short sampling interval (two
snapshots); latencies (score change to intent, intent to expansion done, score change to delivery)
are over each one's newest ``RECENT_LATENCIES`` samples.
Queue depths need RabbitMQ (``GOALHORN_AMQP_URL``); everything else comes from Redis.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from goalhorn.admin.breakers import BreakerView, read_board
from goalhorn.admin.dlq import Filter, Group, list_groups
from goalhorn.admin.queues import QueueStats, queue_stats
from goalhorn.counters import PipelineCounters, StageLatency, delivery_counter
from goalhorn.dispatch.breaker import State
from goalhorn.dispatch.pause import paused
from goalhorn.errors import ConfigError
from goalhorn.keys import PLATFORMS, Keys
from goalhorn.models import utcnow
from goalhorn.redis_client import Redis, make_redis
from goalhorn.settings import Settings

RECENT_LATENCIES = 1000
STAGES: dict[str, str] = {
    "ingest": "intents",
    "ingest live updates": "live_intents",
    "fanout": "intents_done",
    "fanout batches": "batches_published",
    "deliver batches": "batches_done",
}
"""Each stage's throughput is the rate of one shared counter. The fanout expands both kinds of intent
ingest publishes: alerts (``intents``) and Live Activity updates (``live_intents``)."""


@dataclass(slots=True)
class Status:
    namespace: str
    interval_s: float
    rates: dict[str, float] = field(default_factory=dict)
    """Per second over the interval: each stage (``STAGES``) and ``sent:<platform>``."""
    totals: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per stage (ingest: score change to intent; fanout: intent to expansion done; delivery: score
    change to delivery), p50 and p99 of the newest samples."""
    queues: list[QueueStats] | None = None
    """None without RabbitMQ settings."""
    breakers: list[BreakerView] = field(default_factory=list)
    """Those not closed."""
    paused: dict[str, dict[str, object]] = field(default_factory=dict)
    dead_letters_last_hour: list[Group] = field(default_factory=list)
    live_games: int = 0
    oldest_live_state_s: float | None = None
    oldest_live_game: str | None = None


async def status(settings: Settings, interval_s: float = 1.0) -> Status:
    if settings.redis_url is None:
        raise ConfigError("GOALHORN_REDIS_URL is not set: the pipeline's counters and flags live in Redis")
    keys = Keys(settings.namespace)
    redis = make_redis(settings)
    try:
        return await _status(settings, redis, keys, interval_s)
    finally:
        await redis.aclose()


async def _status(settings: Settings, redis: Redis, keys: Keys, interval_s: float) -> Status:
    out = Status(settings.namespace, interval_s)
    counters = PipelineCounters(redis, keys)
    before, started = await counters.snapshot(), time.monotonic()
    queues = asyncio.ensure_future(queue_stats(settings)) if settings.amqp_url else None
    await asyncio.sleep(interval_s)
    after, elapsed = await counters.snapshot(), time.monotonic() - started
    names = {**STAGES, **{f"sent:{p}": delivery_counter(p, "sent") for p in PLATFORMS}}
    for label, counter in names.items():
        out.rates[label] = max(0, after.get(counter) - before.get(counter)) / elapsed
        out.totals[label] = after.get(counter)
    stages: tuple[tuple[str, StageLatency | None], ...] = (
        ("ingest", "ingest"),
        ("fanout", "fanout"),
        ("delivery", None),
    )
    for name, stage in stages:
        recent = sorted(await counters.recent_latencies(stage, RECENT_LATENCIES))
        out.latency_ms[name] = {
            q: recent[min(len(recent) - 1, int(len(recent) * n / 100))] if recent else None
            for q, n in (("p50", 50), ("p99", 99))
        }
    out.breakers = [b for b in await read_board(redis, keys) if b.state is not State.CLOSED]
    out.paused = {str(k): v for k, v in (await paused(redis, keys)).items()}
    since = utcnow() - timedelta(hours=1)
    out.dead_letters_last_hour = (await list_groups(redis, keys, Filter(since=since))).groups
    out.live_games = int(await redis.zcard(keys.live_games()))
    oldest: list[Any] = await redis.zrange(keys.live_games(), 0, 0, withscores=True)
    if oldest:
        game, updated_ms = oldest[0]
        out.oldest_live_game = game.decode() if isinstance(game, bytes) else str(game)
        out.oldest_live_state_s = max(0.0, time.time() - float(updated_ms) / 1000)
    if queues is not None:
        out.queues = await queues
    return out
