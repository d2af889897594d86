"""The fanout stage: intents off the bus, expanded into delivery batches on the provider queues.

``goalhorn run fanout`` runs it (as many as the intent load needs; RabbitMQ spreads intents over them).
An intent is acked only after its last batch was confirmed by the broker, so a fanout process killed
mid-intent leaves it to be expanded again elsewhere (the delivery markers drop the repeats). While
Redis is unreachable or has lost the subscriber data, intents are held unacked, not expanded to
nobody (``goalhorn.segmenter.hold``, ``goalhorn.segmenter.epoch_watch``); ``/readyz`` says why. On
stop the consumer takes no new intent, requeues those it holds and waits for those being expanded.

Live Activity intents (``live:<game key>``) are expanded over the Live Activities registry
(``goalhorn.liveactivities``); with APNs configured and ``GOALHORN_LIVE_ACTIVITIES`` and
``GOALHORN_LIVE_CHANNELS`` on, the stage also runs the games' broadcast channel lifecycle (one fanout
process at a time, under a Redis lease), over the games of the live state this module hands it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence

from goalhorn.app.parts import Parts
from goalhorn.bus import Subscription
from goalhorn.catalog import Catalog
from goalhorn.ingest.live import LiveState
from goalhorn.keys import Keys
from goalhorn.liveactivities.audience import LiveAudience
from goalhorn.liveactivities.channels import ChannelLifecycle, GameSlot
from goalhorn.liveactivities.registry import LiveRegistry
from goalhorn.models import GameStatus
from goalhorn.redis_client import Redis
from goalhorn.segmenter.consumer import IntentConsumer
from goalhorn.segmenter.expander import Expander
from goalhorn.segmenter.hold import describe
from goalhorn.settings import Settings
from goalhorn.topics.state import topic_planner

log = logging.getLogger(__name__)

NAME = "fanout"
WATCH_INTERVAL_S = 5.0
"""How often an idle fanout process checks the subscriber epoch, so a loss is reported before an intent meets it."""


def live_registry(settings: Settings, redis: Redis) -> LiveRegistry:
    return LiveRegistry(
        redis, Keys(settings.namespace), buckets=settings.preference_buckets, ttl_s=settings.live_registration_ttl_s
    )


def live_audience(settings: Settings, redis: Redis) -> LiveAudience:
    return LiveAudience(
        redis,
        Keys(settings.namespace),
        live_registry(settings, redis),
        activity_type=settings.live_activity_type,
        starts_per_user=settings.live_starts_per_user,
        start_window_s=settings.live_start_window_s,
        batch_size=settings.batch_size,
        scan_count=settings.expand_chunk,
    )


def live_games(live: LiveState) -> Callable[[Collection[str]], Awaitable[Sequence[GameSlot]]]:
    """The channel lifecycle's view of the live state: scheduled and live games, and the given ones."""

    async def games(wanted: Collection[str]) -> list[GameSlot]:
        scheduled, playing = await asyncio.gather(live.by_status(GameStatus.SCHEDULED), live.by_status(GameStatus.LIVE))
        names = list(dict.fromkeys([*scheduled, *playing, *wanted]))
        out = []
        for name, game in zip(names, await asyncio.gather(*(live.get(name) for name in names)), strict=True):
            if game is None:
                continue  # an index entry whose state expired
            state = game.state
            out.append(
                GameSlot(
                    game_id=name,
                    home_team_id=state.home_team_id,
                    away_team_id=state.away_team_id,
                    status=state.status.value,
                    starts_at=state.start_time.timestamp() if state.start_time is not None else None,
                )
            )
        return out

    return games


def make_expander(settings: Settings, redis: Redis, catalog: Callable[[], Catalog]) -> Expander:
    """The expander ``settings`` describe, reading segments from ``catalog()`` (also what
    ``goalhorn segments preview`` runs, so a preview reaches who fanout would)."""
    return Expander(
        redis,
        Keys(settings.namespace),
        catalog,
        chunk=settings.expand_chunk,
        batch_size=settings.batch_size,
        buckets=settings.preference_buckets,
        bloom=settings.bloom_enabled,
        bloom_error_rate=settings.bloom_error_rate,
        bloom_rebuild_pending=settings.bloom_rebuild_pending,
        topics=topic_planner(settings, redis),
        live=live_audience(settings, redis),
    )


class FanoutStage:
    name = NAME

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        expander = make_expander(parts.settings, parts.redis, parts.catalog.current)
        self.consumer = IntentConsumer(
            expander,
            parts.delivery.enqueue,
            parts.counters,
            redis=parts.redis,
            keys=parts.keys,
            buckets=parts.settings.preference_buckets,
        )
        self._subscription: Subscription | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._channels: asyncio.Task[None] | None = None
        self.channels: ChannelLifecycle | None = None
        """The broadcast channel lifecycle, when APNs is configured and Live Activities and channels are on."""

    async def start(self) -> None:
        queue = self.parts.keys.intent_queue
        await self.parts.bus.start([queue])
        self._subscription = await self.parts.bus.consume(
            queue, self.consumer, prefetch=self.parts.settings.intent_prefetch
        )
        self._watcher = asyncio.create_task(self._watch())
        settings = self.parts.settings
        if settings.live_activities and settings.live_channels and settings.apns_key_file:
            from goalhorn.providers.apns_channels import ApnsChannels  # httpx's HTTP/2 client: only when used

            self.channels = ChannelLifecycle(
                self.parts.redis,
                self.parts.keys,
                live_registry(settings, self.parts.redis),
                ApnsChannels(settings),
                live_games(LiveState(self.parts.redis, self.parts.keys, retention_s=settings.live_state_retention_s)),
                lead_s=settings.live_channel_lead_s,
                min_followers=settings.live_channel_min_followers,
                keep_s=settings.live_channel_keep_s,
                max_channels=settings.live_channel_max,
            )
            self._channels = asyncio.create_task(self._keep_channels(self.channels, settings.live_channel_interval_s))

    def ready(self) -> bool:
        return self._subscription is not None

    def alarms(self) -> list[str]:
        """Why intents are not being expanded, for ``/readyz``."""
        out = []
        if self.consumer.watch.alarm is not None:
            out.append(f"Redis lost the subscriber data ({self.consumer.watch.alarm}); intents are held")
        gate = self.consumer.gate
        if not gate.is_open:
            out.append(f"fanout holds {gate.holding} intents: {gate.reason}")
        return out

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        watcher, self._watcher = self._watcher, None
        channels, self._channels = self._channels, None
        for task in (watcher, channels):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.channels is not None:
            lifecycle, self.channels = self.channels, None
            with contextlib.suppress(Exception):  # stopping: the lease then expires on its own
                await lifecycle.release()
            await lifecycle.aclose()
        # The subscription takes nothing new from its first step; meanwhile the held intents are let go
        # (requeued), so the cancel does not wait out their hold.
        cancelling = asyncio.create_task(subscription.cancel()) if subscription is not None else None
        await asyncio.sleep(0)
        await self.consumer.close()
        if cancelling is not None:
            await cancelling

    async def _keep_channels(self, lifecycle: ChannelLifecycle, interval_s: float) -> None:
        while True:
            try:
                report = await lifecycle.run_once()
                if report.created or report.deleted or report.forgotten or report.over_limit:
                    log.info(
                        "live channels: created %s, deleted %s, forgotten %s, over the limit %s",
                        report.created,
                        report.deleted,
                        report.forgotten,
                        report.over_limit,
                    )
            except Exception as exc:  # Redis or APNs down: tried again next time
                log.warning("live channel pass failed: %s", describe(exc))
            await asyncio.sleep(interval_s)

    async def _watch(self) -> None:
        while True:
            try:
                await self.consumer.watch.check()
            except Exception as exc:  # reported by the watch (a loss) or by /readyz (Redis down)
                log.debug("subscriber epoch check failed: %s", describe(exc))
            await asyncio.sleep(WATCH_INTERVAL_S)


def build(settings: Settings, parts: Parts | None = None) -> FanoutStage:
    return FanoutStage(parts or Parts.build(settings))


async def serve(settings: Settings, stop: asyncio.Event, *, metrics_port: int | None = None) -> None:
    """Run the fanout stage alone until ``stop`` is set."""
    from goalhorn.app.process import serve_stages

    await serve_stages(settings, (NAME,), stop, metrics_port=metrics_port)
