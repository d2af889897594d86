"""One goalhorn process: the stages it runs, started in order, served until told to stop.

``goalhorn run ingest|fanout|deliver|all`` calls :func:`serve_stages`. Before taking any work it checks
the configuration, Redis and RabbitMQ (:mod:`goalhorn.app.preflight`) and the stored layout; then it
starts deliver, fanout and ingest (those it runs, in that order, so nothing is produced before its
consumer runs) and serves ``/healthz``, ``/readyz`` and ``/metrics``. When ``stop`` is set it stops
them the other way round: ingest stops polling, fanout takes no new intent and finishes the ones it
is expanding, deliver finishes or requeues the batches it holds. Each stage's stop is bounded (see
``STOP_TIMEOUT_S``); what a stage still held after that is unacked, so RabbitMQ redelivers it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from goalhorn.app import deliver
from goalhorn.app.health import HealthServer
from goalhorn.app.parts import Parts
from goalhorn.app.preflight import check_services
from goalhorn.errors import ConfigError
from goalhorn.preferences.layout import check_layout
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

FANOUT = "fanout"
INGEST = "ingest"
STAGES = (deliver.NAME, FANOUT, INGEST)
"""Every stage, in start order. Fanout's and ingest's modules (the expander with numpy, the feed adapters)
are imported only by a process that runs them (:func:`_builder`), so a worker's memory holds none of them."""
FANOUT_STOP_TIMEOUT_S = 15.0
INGEST_STOP_TIMEOUT_S = 15.0
"""``goalhorn.app.ingest.STOP_TIMEOUT_S`` (10 s) + 5."""
STOP_TIMEOUT_S = {
    INGEST: INGEST_STOP_TIMEOUT_S,
    FANOUT: FANOUT_STOP_TIMEOUT_S,
    deliver.NAME: deliver.STOP_TIMEOUT_S + 5,
}
"""Upper bound of each stage's stop; a process stops within their sum (60 s) plus closing its clients."""


class Stage(Protocol):
    name: str

    async def start(self) -> None: ...

    def ready(self) -> bool: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Alarming(Protocol):
    def alarms(self) -> list[str]:
        """What keeps the stage from doing its work though it runs (for ``/readyz``)."""
        ...


def _builder(name: str) -> Callable[[Parts], Stage]:
    """The stage called ``name``, its module imported now (see ``STAGES``)."""
    if name == INGEST:
        from goalhorn.app.ingest import IngestStage

        return IngestStage
    if name == FANOUT:
        from goalhorn.app.fanout import FanoutStage

        return FanoutStage
    return deliver.DeliverStage


def require_services(settings: Settings) -> None:
    """A stage process works on RabbitMQ and Redis; the embedded default lives inside one process."""
    missing = [
        name
        for name, url in (("GOALHORN_AMQP_URL", settings.amqp_url), ("GOALHORN_REDIS_URL", settings.redis_url))
        if not url
    ]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not set: stage processes share work through RabbitMQ and Redis "
            "(e.g. amqp://guest:guest@127.0.0.1:5672/ and redis://127.0.0.1:6379/0); "
            "`goalhorn demo` runs everything in one process without them"
        )


async def serve_stages(
    settings: Settings,
    names: Sequence[str],
    stop: asyncio.Event,
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    on_ready: Callable[[HealthServer | None], None] | None = None,
) -> None:
    """Run the named stages in this process until ``stop`` is set (see the module docstring).

    Raises :class:`ConfigError` (its subclass ``ServiceUnreachable`` for services) before any work is
    taken when the configuration, a service or the stored layout is not usable."""
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})")
    if INGEST in names:
        from goalhorn.app.ingest import check_feeds

        check_feeds(settings)
    require_services(settings)
    await check_services(settings)
    if deliver.NAME in names:
        for platform, configured in (("FCM", settings.fcm_credentials_file), ("APNs", settings.apns_key_file)):
            if not configured:
                log.warning("%s is not configured: its pushes go to the console provider (a dry run)", platform)
    parts = Parts.build(settings)
    started: list[Stage] = []
    health: HealthServer | None = None
    try:
        await check_layout(parts.redis, parts.keys, settings)
        stages = [_builder(name)(parts) for name in STAGES if name in names]

        async def readiness() -> list[str]:
            reasons = [f"{stage.name} is not running" for stage in stages if not stage.ready()]
            reasons += [alarm for stage in stages if isinstance(stage, Alarming) for alarm in stage.alarms()]
            try:
                await parts.redis.ping()
            except Exception as exc:  # any failure means "not ready", with why
                reasons.append(f"Redis does not answer ({type(exc).__name__})")
            return reasons

        if metrics_port is not None:
            health = HealthServer(metrics_host, metrics_port, readiness)
            await health.start()
        for stage in stages:
            await stage.start()
            started.append(stage)
        log.info("running %s (namespace %s)", ", ".join(s.name for s in stages), settings.namespace)
        if on_ready is not None:
            on_ready(health)
        await stop.wait()
    finally:
        for stage in reversed(started):
            try:
                await asyncio.wait_for(stage.stop(), STOP_TIMEOUT_S[stage.name])
            except TimeoutError:
                log.error(
                    "%s did not stop within %gs; what it held is redelivered", stage.name, STOP_TIMEOUT_S[stage.name]
                )
        if health is not None:
            await health.aclose()
        await parts.aclose()
