"""Telling "Redis lost the subscribers" from "nobody follows", before an intent is acked.

The fanout remembers the subscriber epoch (``goalhorn.preferences.epoch``) it first saw, and checks it
before and after expanding each intent. An epoch that is gone, or replaced by one that is not an
operator's restore, means Redis lost the data the expansion read: the check raises
:class:`SubscriberDataLost`, writes ``lost:`` into the epoch so every other fanout process (also one
started later) holds its intents too, logs CRITICAL once, and sets ``goalhorn_redis_data_lost`` to 1
until an operator restores the subscribers and runs ``goalhorn subscribers restored``.

A process that starts when the namespace has no epoch at all: if the device hashes hold data (written
before epochs existed, or by hand), it sets the epoch itself and goes on; if they are empty the
namespace holds no subscribers yet, and an intent reaches nobody, which is then the truth as far as
anyone can tell (Redis that lost everything while no fanout process ran looks the same: see
docs/reliability.md).
"""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from goalhorn.errors import StoreError
from goalhorn.keys import Keys
from goalhorn.preferences.epoch import LOST, Epoch, SubscriberEpoch
from goalhorn.redis_client import Redis

log = logging.getLogger(__name__)

DATA_LOST = Gauge(
    "goalhorn_redis_data_lost",
    "1 while this process holds intents because Redis lost the subscriber data (the subscriber epoch it "
    "saw is gone or replaced); cleared by `goalhorn subscribers restored`.",
    ["namespace"],
)

RESTORE_HINT = "restore the subscribers (goalhorn subscribers import), then run `goalhorn subscribers restored`"


class SubscriberDataLost(StoreError):
    """Redis no longer holds the subscriber data the fanout saw: an expansion would miss people."""


class EpochWatch:
    """One process's memory of the subscriber epoch, and the alarm when it no longer holds."""

    def __init__(self, redis: Redis, keys: Keys, *, buckets: int) -> None:
        self._redis = redis
        self._keys = keys
        self._buckets = buckets
        self._epoch = SubscriberEpoch(redis, keys)
        self._gauge = DATA_LOST.labels(keys.namespace)
        self._gauge.set(0)
        self.seen: Epoch | None = None
        self.alarm: str | None = None
        """Why the data is taken as lost, while it is."""
        self._told_empty = False

    async def check(self) -> Epoch | None:
        """The epoch the subscriber data is whole under (None: the namespace holds no subscribers);
        raises :class:`SubscriberDataLost` when it was lost."""
        current = await self._epoch.read()
        if current is not None and current.lost:
            token = current.value.removeprefix(LOST)
            raise self._lost(f"a fanout process found the subscriber data of epoch {token} lost")
        seen = self.seen
        if seen is None:
            if current is None:
                if not await self._holds_devices():
                    if not self._told_empty:
                        log.warning(
                            "namespace %s holds no subscribers (no epoch, no devices): intents reach nobody",
                            self._keys.namespace,
                        )
                        self._told_empty = True
                    return None
                await self._epoch.ensure()  # data written without an epoch: it becomes this one's
                current = await self._epoch.read()
                if current is None or current.lost:
                    raise self._lost("the subscriber epoch vanished as it was set")
            self._accept(current)
            return current
        if current == seen:
            return current
        if current is not None and current.restored:
            log.warning("subscriber data restored (epoch %s, was %s): expanding intents again", current, seen)
            self._accept(current)
            return current
        await self._epoch.mark_lost(seen, current)
        what = "is gone" if current is None else f"was replaced by {current}"
        raise self._lost(f"the subscriber epoch {seen} this process saw {what}: Redis restarted empty or was flushed")

    def _accept(self, epoch: Epoch) -> None:
        if self.seen is None:
            log.info("namespace %s: subscriber epoch %s", self._keys.namespace, epoch)
        self.seen = epoch
        if self.alarm is not None:
            self.alarm = None
            self._gauge.set(0)

    def _lost(self, reason: str) -> SubscriberDataLost:
        """Raise the alarm (logged once, the gauge set); the error to raise."""
        if self.alarm is None:
            log.critical(
                "Redis lost the subscriber data of namespace %s (%s); intents are held, not acked: %s",
                self._keys.namespace,
                reason,
                RESTORE_HINT,
            )
        self.alarm = reason
        self._gauge.set(1)
        return SubscriberDataLost(reason)

    async def _holds_devices(self) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        for bucket in range(self._buckets):
            pipe.exists(self._keys.device_bucket(bucket))
        return any(await pipe.execute())
