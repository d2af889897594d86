"""Pausing a provider: workers stop taking its batches, which stay queued in RabbitMQ.

The flags are a Redis HASH (``Keys.paused``, platform -> JSON of who paused it and when), written by
``goalhorn pause|resume`` (``goalhorn.admin.pause``). Each delivery worker reads it every ``POLL_S``
(from a thread of its own, on the worker's event loop), and for a paused platform:

- pauses dramatiq's consumers of that provider's queues (both lanes, ``goalhorn.dispatch.lanes``): the
  next read of each returns nothing (the gate wraps ``broker.consume``, as dramatiq only pauses a
  consumer once its queue is idle, which a busy queue never is), so the consumer closes its channel,
  which hands every prefetched message back to RabbitMQ, and takes no new one until resumed; nothing
  is held unacked while paused;
- makes the actor put back, instead of delivering, a batch it still takes (one already prefetched,
  or one a busy queue keeps feeding before the consumer is idle): ``ProviderPaused`` is handled by
  :class:`~goalhorn.dispatch.failures.ActorFailures`, which publishes the message again to the
  delay queue (confirmed) and only then acks it, spending no try. From the delay queue it returns
  to the provider's queue after ``PAUSED_RECHECK_S`` and waits there.

A pause holds on every worker within ``POLL_S`` plus the batches a worker had already started.
A worker that cannot read the flags keeps the last ones it read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from prometheus_client import Gauge

from goalhorn.keys import PLATFORMS, Keys, Platform
from goalhorn.redis_client import Redis

log = logging.getLogger(__name__)

POLL_S = 1.0
PAUSED_RECHECK_S = 5.0
"""How long a batch put back by a paused provider waits in the delay queue before it is back in its
queue (where it then stays while the consumer is paused)."""
LOG_EVERY_S = 30.0

PAUSED = Gauge("goalhorn_provider_paused", "1 while this worker holds a provider paused.", ["platform"])


class ProviderPaused(dramatiq.Retry):
    """Raised by the delivery actor for a batch of a paused provider: put back, not failed."""


async def paused(redis: Redis, keys: Keys) -> dict[Platform, dict[str, Any]]:
    """The paused providers, with who paused them, when and why."""
    raw = await redis.hgetall(keys.paused())
    out: dict[Platform, dict[str, Any]] = {}
    for name, value in raw.items():
        platform = name.decode() if isinstance(name, bytes) else str(name)
        if platform not in PLATFORMS:
            continue
        try:
            entry = json.loads(value)
            entry["since"] = datetime.fromisoformat(entry["since"])
        except (ValueError, TypeError, KeyError):
            entry = {"since": None, "by": "?", "reason": "unreadable flag"}
        out[platform] = entry
    return out


class PauseGate(dramatiq.Middleware):
    """One worker's view of the pause flags, and the consumers it pauses (see the module)."""

    def __init__(
        self, keys: Keys, redis: Callable[[], Redis], *, poll_s: float = POLL_S, queues: Mapping[str, Platform]
    ) -> None:
        self._keys = keys
        self._redis = redis
        self._poll_s = poll_s
        self._queues = dict(queues)
        self._paused: frozenset[Platform] = frozenset()
        self._consumers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0

    def is_paused(self, platform: Platform) -> bool:
        return platform in self._paused

    def install(self, broker: dramatiq.Broker) -> None:
        """Wrap ``broker.consume`` so that a paused provider's consumer stops reading at once."""
        consume = broker.consume

        def pausable(queue_name: str, prefetch: int = 1, timeout: int = 30000) -> dramatiq.Consumer:
            inner = consume(queue_name, prefetch=prefetch, timeout=timeout)
            platform = self._queues.get(queue_name)
            if platform is None:
                return inner
            return _PausableConsumer(inner, lambda: platform in self._paused)  # type: ignore[return-value]

        broker.consume = pausable  # type: ignore[method-assign]

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        with self._lock:
            self._consumers[thread.queue_name] = thread
            platform = self._queues.get(thread.queue_name)
        if platform is not None and platform in self._paused:
            thread.pause()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="goalhorn-pause-flags", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._poll_s + 5)

    def _poll(self) -> None:
        while not self._stop.is_set():
            loop = get_event_loop_thread()
            if loop is not None:
                try:
                    flags = loop.run_coroutine(self._read())
                except Exception as exc:  # Redis away: keep the last flags read
                    now = time.monotonic()
                    if now - self._last_error_log > LOG_EVERY_S:
                        self._last_error_log = now
                        log.warning("pause flags unreadable (%s); keeping %s", type(exc).__name__, sorted(self._paused))
                else:
                    self.apply(frozenset(flags))
            self._stop.wait(self._poll_s)

    async def _read(self) -> dict[Platform, dict[str, Any]]:
        # On the worker's event loop, where the stage's Redis client is made and used.
        return await paused(self._redis(), self._keys)

    def apply(self, now_paused: frozenset[Platform]) -> None:
        """Take a new set of paused providers: pause or resume their consumers."""
        before, self._paused = self._paused, now_paused
        for platform in PLATFORMS:
            PAUSED.labels(platform).set(1 if platform in now_paused else 0)
        changed = before ^ now_paused
        if not changed:
            return
        with self._lock:
            consumers = dict(self._consumers)
        for queue, thread in consumers.items():
            owner = self._queues.get(queue)
            if owner in changed:
                if owner in now_paused:
                    thread.pause()
                else:
                    thread.resume()
        for platform in sorted(changed):
            log.warning("provider %s %s", platform, "paused" if platform in now_paused else "resumed")


class _PausableConsumer:
    """A dramatiq consumer that reads nothing while its provider is paused: dramatiq's consumer
    thread, paused too, then closes it (prefetched messages go back to RabbitMQ)."""

    def __init__(self, inner: dramatiq.Consumer, paused: Callable[[], bool]) -> None:
        self._inner = inner
        self._paused = paused

    def __iter__(self) -> _PausableConsumer:
        return self

    def __next__(self) -> dramatiq.MessageProxy | None:
        if self._paused():
            time.sleep(0.05)  # should the thread not be paused yet: no busy loop meanwhile
            return None
        return next(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
