"""The circuit breakers' shared state in Redis: every worker's transitions, read by every worker.

Two HASHes under ``{breakers}`` (``Keys.breakers``, ``Keys.breaker_failures``): per circuit, the
JSON of its last transition (state, when, when a probe may go out, by whom) and the consecutive
failures the last worker to count them saw. A worker publishes its own transitions after each
batch and adopts newer ones at most every ``SYNC_S`` (one HGETALL), before a batch: a circuit
opened, or closed by ``goalhorn breakers reset``, on one worker holds on every worker within
``SYNC_S`` plus the batch each worker has in hand. ``goalhorn.admin.breakers`` reads and resets them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable

from goalhorn.dispatch.breaker import Breakers, State, Transition
from goalhorn.keys import Keys
from goalhorn.redis_client import Redis

SYNC_S = 1.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def encode(transition: Transition) -> str:
    return json.dumps(
        {
            "state": transition.state.value,
            "changed_at": transition.changed_at,
            "open_until": transition.open_until,
            "by": transition.by,
        },
        separators=(",", ":"),
    )


def decode(raw: bytes | str) -> Transition | None:
    """A stored transition, or None for one that does not read (it is then ignored, not trusted)."""
    try:
        data = json.loads(raw)
        return Transition(State(data["state"]), float(data["changed_at"]), float(data["open_until"]), str(data["by"]))
    except (ValueError, TypeError, KeyError):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class BreakerBoard:
    """Publishes one worker's breaker transitions and adopts the others'."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        worker: str | None = None,
        sync_s: float = SYNC_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._worker = worker or worker_name()
        self._sync_s = sync_s
        self._clock = clock
        self._synced_at = float("-inf")

    async def publish(self, breakers: Breakers) -> None:
        """Write the transitions and failure counts made here since the last publish, and list the
        circuits used for the first time (no call if there is nothing)."""
        sent: dict[str, Transition] = {}
        counts: dict[str, int] = {}
        new: set[str] = set()  # a set: every circuit is looked up in it again below (a webhook batch
        # brings up to 500 endpoints not listed yet, and a worker keeps over a thousand circuits)
        for circuit, breaker in breakers.items():
            if not breaker.registered:
                new.add(circuit)
            if breaker.unshared is not None:
                sent[circuit] = breaker.unshared
            if breaker.failures_unshared:
                counts[circuit] = breaker.failures
        if not sent and not counts and not new:
            return
        pipe = self._redis.pipeline(transaction=False)
        for circuit in new:  # listed at first use, as closed with no failure, unless listed already
            pipe.hsetnx(self._keys.breaker_failures(), circuit, 0)
        if sent:
            mine = {c: encode(Transition(t.state, t.changed_at, t.open_until, self._worker)) for c, t in sent.items()}
            pipe.hset(self._keys.breakers(), mapping=mine)  # type: ignore[arg-type]
        if counts:
            pipe.hset(self._keys.breaker_failures(), mapping=counts)  # type: ignore[arg-type]
        await pipe.execute()
        # Only now, a failed write being tried again next time; and only what was written: sends
        # that ran meanwhile may have changed a breaker again.
        for circuit, breaker in breakers.items():
            if circuit in sent and breaker.unshared is sent[circuit]:
                breaker.unshared = None
            if circuit in counts and breaker.failures == counts[circuit]:
                breaker.failures_unshared = False
            if circuit in new:
                breaker.registered = True

    async def sync(self, breakers: Breakers, *, force: bool = False) -> None:
        """Publish, then adopt newer transitions from Redis; at most every ``sync_s`` unless ``force``."""
        await self.publish(breakers)
        now = self._clock()
        if not force and now - self._synced_at < self._sync_s:
            return
        self._synced_at = now
        stored = await self._redis.hgetall(self._keys.breakers())
        for circuit, raw in stored.items():
            transition = decode(raw)
            if transition is not None:
                breakers[_text(circuit)].adopt(transition)
