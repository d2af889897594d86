"""The delivery stage on dramatiq: one actor and queue per provider and lane, async actors on the
AsyncIO middleware, ``RabbitmqBroker(max_priority=10)`` with publisher confirms on real services and
``StubBroker`` on the embedded default.

Batches are enqueued at their intent's priority, to the critical lane's queue from
``GOALHORN_CRITICAL_PRIORITY`` up, else to the normal one (:mod:`goalhorn.dispatch.lanes`). Each worker
process builds its Redis client and providers lazily inside dramatiq's event-loop thread (clients bind
to the loop they first run on); each lane has providers of its own.
An actor never leaves a batch unaccounted: the ``Deliverer`` retries, re-queues or dead-letters
every device itself. What escapes it is handled by :class:`~goalhorn.dispatch.failures.ActorFailures`
in place of dramatiq's ``Retries``: Redis unreachable puts the batch back to wait without spending an
attempt, any other exception is tried again and then dead-lettered in goalhorn's own stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import Any, Self

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries, TimeLimit
from dramatiq.middleware.asyncio import AsyncIO
from pydantic import ValidationError

from goalhorn.catalog.templates import Renderer
from goalhorn.counters import PipelineCounters, dispatch_counts
from goalhorn.dispatch import deadletters
from goalhorn.dispatch.delivery import Deliverer
from goalhorn.dispatch.failures import ActorFailures, RedisUnavailable, redis_unavailable
from goalhorn.dispatch.lanes import ACTOR_PRIORITY, AfterCritical, CriticalFirst, LaneWorker, lane_of
from goalhorn.dispatch.pause import PauseGate, ProviderPaused
from goalhorn.keys import LANES, PLATFORMS, Keys, Lane, Platform
from goalhorn.models import (
    DeadLetter,
    DeadLetterCode,
    DeadLetterKind,
    DeliveryBatch,
    Device,
    EncodedBatch,
    Intent,
    utcnow,
)
from goalhorn.providers import Provider
from goalhorn.redis_client import Redis, make_redis
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

ProviderFactory = Callable[[Platform, Renderer], Provider]
"""Builds a platform's provider formatting messages with the given renderer (``make_provider(settings, ...)``)."""


def salvage(payload: str, platform: Platform) -> tuple[DeliveryBatch | None, list[tuple[str, str]]]:
    """A batch that failed validation only because of some of its devices: the batch of the valid
    ones, and each invalid device's JSON with why. ``(None, [])`` when the batch itself is unreadable
    or none of its devices is valid.

    The expander writes one device per line (``goalhorn.segmenter.batches``), so even a device whose
    JSON is broken, which makes the whole message unparsable, is cut out line by line."""
    try:
        data = json.loads(payload)
        raws: list[str] = [json.dumps(raw) for raw in data["devices"]]
    except (ValueError, TypeError, KeyError):
        data, raws = _by_lines(payload)
        if data is None:
            return None, []
    try:
        intent = Intent.model_validate(data["intent"])
        batch_id, attempt = str(data["batch_id"]), int(data.get("attempt", 1))
    except (ValueError, TypeError, KeyError, ValidationError):
        return None, []
    good: list[Device] = []
    bad: list[tuple[str, str]] = []
    for raw in raws:
        try:
            device = Device.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            bad.append((raw, f"{where}: {first['msg']}" if where else first["msg"]))
            continue
        if device.platform != platform:
            bad.append((raw, f"a {device.platform} device in a {platform} batch"))
        else:
            good.append(device)
    try:
        batch = DeliveryBatch(batch_id=batch_id, platform=platform, intent=intent, devices=tuple(good), attempt=attempt)
    except ValidationError:  # no valid device, too many, or a bad attempt number: nothing to salvage
        return None, []
    return batch, bad


def _by_lines(payload: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The head of a batch message written by the expander (everything but the devices) and its device
    lines, when the message is in that shape: ``{...,"devices":[`` / one device per line / ``]}``."""
    lines = payload.split("\n")
    if len(lines) < 3 or not lines[0].endswith('"devices":[') or lines[-1] != "]}":
        return None, []
    try:
        head = json.loads(lines[0] + "]}")
    except ValueError:
        return None, []
    if not isinstance(head, dict):
        return None, []
    body = lines[1:-1]
    return head, [line[:-1] if line.endswith(",") and n < len(body) - 1 else line for n, line in enumerate(body)]


def _batch_identity(payload: str) -> tuple[str | None, str | None, int]:
    """The batch id, intent id and device count of a batch message, as far as it can be read."""
    try:
        data = json.loads(payload)
        return str(data["batch_id"]), str(data["intent"]["intent_id"]), len(data["devices"])
    except (ValueError, TypeError, KeyError):
        return None, None, 0


def delivery_message(keys: Keys, batch: EncodedBatch, critical_priority: int) -> dramatiq.Message[Any]:
    """The dramatiq message :meth:`DeliveryStage.enqueue` sends for ``batch``, for tools that publish
    it themselves (``goalhorn dlq replay``): to its lane's queue (``message.queue_name``), at AMQP
    priority ``batch.priority``."""
    lane = lane_of(batch.priority, critical_priority)
    return dramatiq.Message(
        queue_name=keys.delivery_queue(batch.platform, lane),
        actor_name=keys.delivery_actor(batch.platform, lane),
        args=(batch.payload.decode(),),
        kwargs={},
        options={"broker_priority": batch.priority},
    )


def make_broker(settings: Settings) -> dramatiq.Broker:
    """RabbitMQ with priorities and confirms when ``amqp_url`` is set, dramatiq's stub otherwise.

    Of dramatiq's default middleware only ``TimeLimit`` is kept: ``Retries`` is replaced by the
    stage's ``ActorFailures``, and none of the others (age limits, callbacks, pipelines, shutdown
    notifications) is used by goalhorn, so none can fail a message into ``.XQ`` behind its back."""
    middleware: list[dramatiq.Middleware] = [TimeLimit(), AsyncIO()]
    if settings.amqp_url:
        return RabbitmqBroker(url=settings.amqp_url, max_priority=10, confirm_delivery=True, middleware=middleware)
    return StubBroker(middleware=middleware)


class _CloseRuntime(dramatiq.Middleware):
    """Closes the stage's providers and Redis client after the worker threads stopped and before the
    AsyncIO middleware stops the event loop they live on."""

    def __init__(self, stage: DeliveryStage) -> None:
        self._stage = stage

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stage.close_runtime()


class DeliveryStage:
    """Declares the delivery actors on a broker, per provider and lane, and enqueues batches to them."""

    def __init__(
        self, settings: Settings, broker: dramatiq.Broker, providers: ProviderFactory, render: Renderer
    ) -> None:
        self.settings = settings
        self._render = render
        self.broker = broker
        self.keys = Keys(settings.namespace)
        self._provider_factory = providers
        self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="goalhorn-enqueue")
        self._deliverer: Deliverer | None = None
        """The normal lane's; the critical lane's is ``_critical_deliverer`` (both share one set of breakers)."""
        self._critical_deliverer: Deliverer | None = None
        self._critical_first: CriticalFirst | None = None
        self._redis: Redis | None = None
        if any(isinstance(m, Retries) for m in broker.middleware):
            raise ValueError("a delivery broker runs without dramatiq's Retries (see make_broker)")
        broker.add_middleware(ActorFailures(settings, self.dead_letter))
        self.queues: dict[str, tuple[Platform, Lane]] = {
            self.keys.delivery_queue(p, lane): (p, lane) for p in PLATFORMS for lane in LANES
        }
        """Every delivery queue of the stage, with its provider and lane."""
        self.pause_gate = PauseGate(
            self.keys, self._redis_client, queues={queue: p for queue, (p, _) in self.queues.items()}
        )
        broker.add_middleware(self.pause_gate)
        self.pause_gate.install(broker)
        lanes: dict[Lane, dict[Platform, dramatiq.Actor[Any, Any]]] = {
            lane: {
                platform: dramatiq.Actor(
                    partial(self._deliver, platform, lane),
                    broker=broker,
                    actor_name=self.keys.delivery_actor(platform, lane),
                    queue_name=self.keys.delivery_queue(platform, lane),
                    priority=ACTOR_PRIORITY[lane],
                    options={},
                )
                for platform in PLATFORMS
            }
            for lane in LANES
        }
        self.actors: dict[Platform, dramatiq.Actor[Any, Any]] = lanes["normal"]
        self.critical_actors: dict[Platform, dramatiq.Actor[Any, Any]] = lanes["critical"]
        broker.add_middleware(_CloseRuntime(self), after=AsyncIO)  # after_* hooks run in reverse: this one first

    def lane(self, priority: int) -> Lane:
        """The lane of a batch of an intent at ``priority``."""
        return lane_of(priority, self.settings.critical_priority)

    async def enqueue(self, batch: EncodedBatch, delay_s: float = 0.0) -> None:
        """Send a batch to its provider's queue of its lane, at its intent's priority (blocking I/O off
        the loop). Retries and deferrals come through here too, so a batch stays in its lane."""
        lanes = self.critical_actors if self.lane(batch.priority) == "critical" else self.actors
        actor = lanes[batch.platform]
        send = partial(
            actor.send_with_options,
            args=(batch.payload.decode(),),
            broker_priority=batch.priority,
            delay=int(delay_s * 1000) or None,
        )
        await asyncio.get_running_loop().run_in_executor(self._publisher, send)

    def _redis_client(self) -> Redis:
        if self._redis is None:
            self._redis = make_redis(self.settings)
        return self._redis

    def _runtime(self, lane: Lane) -> tuple[Deliverer, CriticalFirst]:
        if self._deliverer is None or self._critical_deliverer is None or self._critical_first is None:
            gate = CriticalFirst()
            normal = Deliverer(
                self.settings,
                self._redis_client(),
                {
                    p: AfterCritical(
                        self._provider_factory(p, self._render),
                        gate,
                        concurrency=self.settings.normal_lane_concurrency,
                    )
                    for p in PLATFORMS
                },
                self.enqueue,
            )
            critical = Deliverer(
                self.settings,
                self._redis_client(),
                {p: self._provider_factory(p, self._render) for p in PLATFORMS},
                self.enqueue,
            )
            # One process, one view of each circuit: what either lane's sends count opens it for both;
            # one pacing of each provider, which either lane's quota refusals slow down for both.
            critical.breakers = normal.breakers
            critical.buckets = normal.buckets
            self._deliverer, self._critical_deliverer, self._critical_first = normal, critical, gate
        return (self._critical_deliverer if lane == "critical" else self._deliverer), self._critical_first

    async def _deliver(self, platform: Platform, lane: Lane, payload: str) -> None:
        if self.pause_gate.is_paused(platform):
            raise ProviderPaused(f"{platform} is paused")
        try:
            await self._deliver_payload(platform, lane, payload)
        except Exception as exc:
            if redis_unavailable(exc):
                raise RedisUnavailable(f"Redis unavailable ({type(exc).__name__})") from exc
            raise

    async def _deliver_payload(self, platform: Platform, lane: Lane, payload: str) -> None:
        deliverer, critical_first = self._runtime(lane)
        try:
            batch = DeliveryBatch.from_json(payload)
        except ValidationError as exc:
            good, bad = salvage(payload, platform)
            if good is None:
                problems = [(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()[:3]]  # no input: secrets
                log.error("unreadable %s batch quarantined: %s", platform, problems)
                # Dead letter first: should Redis go between the two, the batch comes back and is
                # dead-lettered twice rather than counted done twice.
                entry = DeadLetter(
                    kind=DeadLetterKind.MESSAGE,
                    code=DeadLetterCode.INVALID_BATCH,
                    detail=f"invalid batch: {exc.error_count()} errors",
                    platform=platform,
                    payload=payload,
                )
                await deliverer.dead_letter(entry)
                await deliverer.counters.add(dispatch_counts({"batches_done": 1, "quarantined_batches": 1}))
                return
            log.error(
                "%s batch %s: %d invalid devices quarantined, delivering the other %d",
                platform,
                good.batch_id,
                len(bad),
                len(good.devices),
            )
            await deliverer.counters.add(dispatch_counts({"quarantined_devices": len(bad)}))
            code = f"dead_lettered:{DeadLetterCode.INVALID_DEVICE}"
            await deliverer.traces.delivered(
                good.intent.intent_id, platform, {"dead_lettered": len(bad), code: len(bad)}, utcnow()
            )
            for raw, reason in bad:
                entry = DeadLetter(
                    kind=DeadLetterKind.DEVICE,
                    code=DeadLetterCode.INVALID_DEVICE,
                    detail=f"invalid device in batch {good.batch_id}: {reason}",
                    platform=platform,
                    payload=raw,
                    batch_id=good.batch_id,
                    intent_id=good.intent.intent_id,
                    devices=1,
                )
                await deliverer.dead_letter(entry)
            batch = good
        if lane == "critical":
            async with critical_first.critical():
                await deliverer.process(batch)
        else:
            await deliverer.process(batch)

    def dead_letter(self, queue: str, payload: str, reason: str) -> None:
        """Write a batch message the worker gave up on to the dead letters and count it done (blocking,
        from a worker thread; raises when Redis is unreachable)."""
        platform = self._platform_of(queue)
        thread = get_event_loop_thread()
        if thread is None:
            raise RuntimeError("dead_letter needs the worker's event loop (the AsyncIO middleware)")
        thread.run_coroutine(self._dead_letter(platform, payload, reason))

    def _platform_of(self, queue: str) -> Platform:
        found = self.queues.get(queue.removesuffix(".DQ"))
        if found is None:
            raise ValueError(f"{queue!r} is not one of this stage's delivery queues")
        return found[0]

    async def _dead_letter(self, platform: Platform, payload: str, reason: str) -> None:
        # Redis alone, not the Deliverer: what failed may be building the providers.
        redis = self._redis_client()
        batch_id, intent_id, devices = _batch_identity(payload)
        entry = DeadLetter(
            kind=DeadLetterKind.MESSAGE,
            code=DeadLetterCode.WORKER_FAILED,
            detail=reason,
            platform=platform,
            payload=payload,
            batch_id=batch_id,
            intent_id=intent_id,
            devices=devices,
        )
        await deadletters.write(redis, self.keys, entry)
        try:
            counters = PipelineCounters(redis, self.keys)
            if intent_id is not None:
                traced = {"dead_lettered": devices, f"dead_lettered:{DeadLetterCode.WORKER_FAILED}": devices}
                await counters.traces(self.settings.sent_marker_ttl_s).delivered(intent_id, platform, traced, utcnow())
            await counters.add(dispatch_counts({"batches_done": 1, "failed_batches": 1}))
        except Exception:  # it is in the dead letters: only the counters miss it
            log.exception("dead letter written, counters not updated")

    async def _aclose_runtime(self) -> None:
        for deliverer in (self._deliverer, self._critical_deliverer):
            if deliverer is not None:
                await deliverer.aclose()
        self._deliverer = self._critical_deliverer = self._critical_first = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def close_runtime(self) -> None:
        """Close providers and Redis inside the worker's event loop (call before stopping the worker)."""
        thread = get_event_loop_thread()
        if thread is not None and (self._deliverer is not None or self._redis is not None):
            thread.run_coroutine(self._aclose_runtime())

    def close(self) -> None:
        self._publisher.shutdown(wait=True)


class DeliveryWorker:
    """An in-process dramatiq worker for every delivery queue, with threads reserved for the critical
    lane (:class:`~goalhorn.dispatch.lanes.LaneWorker`; ``goalhorn worker`` runs the same)."""

    def __init__(self, stage: DeliveryStage) -> None:
        self.stage = stage
        self._worker = LaneWorker(
            stage.broker,
            queues=set(stage.queues),
            worker_threads=stage.settings.worker_threads,
            critical_threads=stage.settings.critical_worker_threads,
            # ms a thread waits for work before it looks again: dramatiq's default (100 cost 2 % of a core idle)
            worker_timeout=1000,
        )

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout_s: float = 600.0) -> None:
        """Take no new batch, wait up to ``timeout_s`` for those in hand, requeue prefetched ones, then
        close providers and Redis (``_CloseRuntime``, while dramatiq's event loop still runs)."""
        self._worker.stop(timeout=int(timeout_s * 1000))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
