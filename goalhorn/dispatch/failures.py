"""What becomes of a delivery message whose actor raised: goalhorn's replacement for dramatiq's
``Retries`` middleware, so that nothing ends in dramatiq's ``.XQ`` queues while goalhorn can say why.

- Redis unreachable (the actor raises :class:`RedisUnavailable`): the message is published again,
  confirmed, after a capped backoff, without spending a try or a delivery attempt; the batch is
  neither delivered nor counted until Redis answers again.
- a paused provider (``ProviderPaused``): published again to the delay queue, confirmed, without
  spending a try (see :mod:`goalhorn.dispatch.pause`).
- Any other exception: the message is published again after a backoff, up to
  ``GOALHORN_DELIVERY_MAX_ATTEMPTS`` tries in all; after the last one it is written whole to
  goalhorn's dead letters with the reason, and counted done.

Only when that publish or that dead-letter write fails too is the message rejected into its queue's
``.XQ`` (logged at CRITICAL): a message is never acked unless it was delivered, published again
(confirmed by RabbitMQ) or dead-lettered. ``docs/delivery.md`` says how an operator sees each case.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import redis.exceptions
from dramatiq.common import xq_name
from prometheus_client import Counter

from goalhorn.backoff import delay_s
from goalhorn.dispatch.pause import PAUSED_RECHECK_S, ProviderPaused
from goalhorn.models import ActorFailureOutcome
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # refused, reset, no connection free in the pool, still loading
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica during a failover
    redis.exceptions.OutOfMemoryError,  # maxmemory reached with noeviction: writes refused
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)
"""Errors that mean Redis cannot be used right now, as opposed to a command that is wrong."""

REDIS_WAIT_MAX_S = 5.0
"""Cap of the delay between two tries of a batch while Redis is unreachable: how long after Redis is
back a waiting batch may still sit in its delay queue."""
TRIES = "retries"
"""Message option: failed tries so far (dramatiq's name, so messages retried by dramatiq count on)."""
REDIS_WAITS = "redis_waits"
"""Message option: how many times the batch was put back because Redis was unreachable."""
LOG_EVERY_S = 10.0

OUTCOMES = Counter(
    "goalhorn_delivery_failures",
    "Delivery messages whose actor raised, by what became of them.",
    ["outcome"],
)

DeadLetterWriter = Callable[[str, str, str], None]
"""Writes a message (its queue, its batch payload, the reason) to goalhorn's dead letters (blocking);
raises when it could not."""


class RedisUnavailable(dramatiq.Retry):
    """Raised by the delivery actor when Redis is unreachable: a wait, not a failure (a ``Retry``, so
    dramatiq does not log it as an error)."""


def redis_unavailable(exc: BaseException) -> bool:
    """Whether ``exc``, or what it was raised from, says Redis cannot be used right now."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, REDIS_ERRORS):
            return True
        seen = seen.__cause__
    return False


class ActorFailures(dramatiq.Middleware):
    """Republishes, or dead-letters, the delivery messages whose actor raised (see the module)."""

    def __init__(
        self,
        settings: Settings,
        dead_letter: DeadLetterWriter,
        *,
        redis_wait_max_s: float = REDIS_WAIT_MAX_S,
        paused_recheck_s: float = PAUSED_RECHECK_S,
    ):
        self._paused_recheck_s = paused_recheck_s
        self._max_tries = settings.delivery_max_attempts
        self._base_s = settings.retry_base_delay_s
        self._max_s = settings.retry_max_delay_s
        self._redis_wait_max_s = redis_wait_max_s
        self._dead_letter = dead_letter
        self._waits_lock = threading.Lock()
        self._waits_since_log = 0
        self._last_wait_log = 0.0

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return
        if isinstance(exception, ProviderPaused):
            if self._publish_again(broker, message, self._paused_recheck_s * random.uniform(1.0, 1.2), {}):
                self._count("paused")
            return
        if isinstance(exception, RedisUnavailable):
            waits = int(message.options.get(REDIS_WAITS, 0))
            delay = delay_s(self._base_s, self._redis_wait_max_s, waits + 1)
            if self._publish_again(broker, message, delay, {REDIS_WAITS: waits + 1}):
                self._count("redis_wait")
                self._log_wait(message, delay)
            return
        tries = int(message.options.get(TRIES, 0)) + 1
        if tries < self._max_tries:
            delay = delay_s(self._base_s, self._max_s, tries)
            if self._publish_again(broker, message, delay, {TRIES: tries}):
                self._count("retried")
                log.warning(
                    "delivery message %s failed (%s), try %d of %d again in %.2fs",
                    message.message_id,
                    type(exception).__name__,
                    tries + 1,
                    self._max_tries,
                    delay,
                )
            return
        reason = f"worker failed {tries} times: {type(exception).__name__}: {exception}"[:500]
        payload = message.args[0] if message.args and isinstance(message.args[0], str) else message.encode().decode()
        try:
            self._dead_letter(message.queue_name, payload, reason)
        except Exception as exc:
            self._reject(message, f"its dead letter could not be written ({type(exc).__name__}); {reason}")
            return
        self._count("dead_lettered")
        log.error("delivery message %s dead-lettered: %s", message.message_id, reason)

    def _publish_again(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, delay_s: float, options: dict[str, int]
    ) -> bool:
        """Publish a copy of ``message`` after ``delay_s`` (confirmed on RabbitMQ); when that fails,
        reject the original into ``.XQ`` rather than ack it."""
        try:
            broker.enqueue(message.copy(options=options), delay=max(1, round(delay_s * 1000)))
        except Exception as exc:
            self._reject(message, f"it could not be published again ({type(exc).__name__}: {exc})")
            return False
        return True

    def _reject(self, message: dramatiq.MessageProxy, why: str) -> None:
        self._count("left_in_xq")
        log.critical("delivery message %s left in %s: %s", message.message_id, xq_name(message.queue_name), why)
        message.fail()

    @staticmethod
    def _count(outcome: ActorFailureOutcome) -> None:
        OUTCOMES.labels(outcome).inc()

    def _log_wait(self, message: dramatiq.MessageProxy, delay_s: float) -> None:
        """One warning per ``LOG_EVERY_S`` however many batches wait: an outage hits every one of them."""
        now = time.monotonic()
        with self._waits_lock:
            self._waits_since_log += 1
            if now - self._last_wait_log < LOG_EVERY_S:
                return
            count, self._waits_since_log, self._last_wait_log = self._waits_since_log, 0, now
        log.warning(
            "Redis unavailable: %d delivery batches put back to wait (e.g. %s, try again in %.2fs)",
            count,
            message.message_id,
            delay_s,
        )
