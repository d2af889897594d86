"""Provider quota pacing: a token bucket per provider, so a burst is smoothed instead of 429ed, and
that slows down by itself when the provider answers 429 anyway (AIMD).

Rates are per worker process (``fcm_rate_per_s`` etc.; FCM's default project quota is 600k/min,
i.e. 10k/s over all workers). At its configured rate the bucket holds one second's worth, so short
bursts go out at once and a long one settles at the rate. Waiters are served in arrival order.

A quota refusal (:func:`quota_refused`: FCM's 429 ``QUOTA_EXCEEDED`` / ``RESOURCE_EXHAUSTED``)
means the project's quota, shared by every worker, is spent for now: :meth:`TokenBucket.refused`
holds every send of the platform in this process until the ``Retry-After``, and cuts the rate
(multiplicative decrease, :data:`DECREASE` of the current rate, or of what was accepted over the
last second when the bucket was at its configured rate). While no refusal comes, the rate grows
back by :data:`INCREASE_SHARE` of its scale each second (additive increase, :data:`MIN_STEP_PER_S`
at least), until it is back at the configured rate (or, unpaced, twice the rate at the cut). Refusals of requests sent
before the last cut are of the wave already slowed for and change nothing. While slowed down the
bucket holds only :data:`ADAPTED_BURST_S` of sends, so the rate is kept even, not in bursts.

APNs' 429 (``TooManyRequests``) is about one device token and a webhook's about one endpoint: neither
slows a platform down (their retries are paced by the backoff and the endpoint breakers).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

from goalhorn.models import DeliveryResult

DECREASE = 0.75
"""The rate after a quota refusal, as a share of the rate before it."""
INCREASE_SHARE = 0.05
"""Added to the rate each second without refusal, as a share of the highest of the rate set by the last
cut and the most this process ever had accepted in a second (so a rate cut low grows back as fast)."""
MIN_STEP_PER_S = 10.0
"""Added to the rate each second without refusal, at least (a process whose first sends were refused
knows no scale yet)."""
MIN_RATE_PER_S = 1.0
"""The rate never goes below this, however many refusals: the sends still probe the quota."""
DEFAULT_HOLD_S = 1.0
"""How long a refusal without ``Retry-After`` holds the sends."""
ADAPTED_BURST_S = 0.1
"""While slowed down, the bucket holds this many seconds' worth of sends."""
OBSERVED_S = 1.0
"""The window over which accepted sends are counted, for the first cut."""

QUOTA_REASONS: dict[str, frozenset[str]] = {"fcm": frozenset({"QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED", "http_429"})}
"""Per platform, the retryable failure reasons that mean its (project-wide) quota is spent."""


def quota_refused(platform: str, result: DeliveryResult) -> bool:
    """Whether ``result`` is the provider refusing a send for its quota (not the device's or its own fault)."""
    return result.outcome == "failed" and result.retryable and result.reason in QUOTA_REASONS.get(platform, ())


class TokenBucket:
    """One platform's pacing in one process (both lanes' sends); lives in one event loop.

    ``rate_per_s`` 0: unpaced until the provider refuses a send for its quota. ``clock`` and
    ``sleep`` are the event loop's unless given (tests give a clock of their own)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_s < 0:
            raise ValueError("rate must be positive, or 0 (unpaced)")
        self.ceiling = rate_per_s or None
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self.rate: float | None = self.ceiling
        """Sends per second now; None: unpaced."""
        self.adapted = False
        """Slowed down by a quota refusal, and not grown back yet."""
        self.refusals = 0
        """Quota refusals that cut the rate (one per wave)."""
        self._release_at = 0.0
        self._step = 0.0
        now = clock()
        self._tokens = self.capacity
        self._stamp = now
        self._grown_at = now
        self._hold_until = now
        self._cut_at = float("-inf")
        self._epoch = 0
        self._accepted: collections.deque[float] = collections.deque()
        self._peak = 0

    @property
    def capacity(self) -> float:
        if self.rate is None:
            return 0.0
        if self.adapted:
            return max(1.0, self.rate * ADAPTED_BURST_S)
        return max(1.0, self._burst if self._burst is not None else self.rate)

    def now(self) -> float:
        return self._clock()

    def reserve(self) -> float:
        """Spend a token (a future one if none is left): how many seconds to wait before sending."""
        now = self._clock()
        self._grow(now)
        held = max(0.0, self._hold_until - now)
        if self.rate is None:
            return held
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        self._tokens -= 1.0
        return max(held, self._stamp - now) + max(0.0, -self._tokens) / self.rate

    async def take(self) -> float:
        """Wait for this send's turn; returns when it went (the clock's time), for :meth:`refused`.
        A cut while waiting puts the send back in line, behind the hold, at the new rate."""
        while True:
            epoch = self._epoch
            wait = self.reserve()
            if wait > 0:
                await self._sleep(wait)
            if epoch == self._epoch:
                return self._clock()

    def accepted(self) -> None:
        """A send the provider took (counted for the rate of the first cut)."""
        now = self._clock()
        self._accepted.append(now)
        while self._accepted and self._accepted[0] <= now - OBSERVED_S:
            self._accepted.popleft()
        self._peak = max(self._peak, len(self._accepted))

    def refused(self, sent_at: float, retry_after: float | None) -> None:
        """The provider refused a send made at ``sent_at`` for its quota: hold every send until the
        ``Retry-After`` and cut the rate, unless that send went before the last cut (same wave)."""
        now = self._clock()
        if sent_at <= self._cut_at:
            return
        while self._accepted and self._accepted[0] <= now - OBSERVED_S:
            self._accepted.popleft()
        base = self.rate if self.adapted and self.rate is not None else float(len(self._accepted))
        if self.rate is not None:
            base = min(base, self.rate)
        self.rate = max(MIN_RATE_PER_S, base * DECREASE)
        self.adapted = True
        self.refusals += 1
        self._step = max(MIN_STEP_PER_S, max(self.rate, self._peak) * INCREASE_SHARE)
        self._release_at = self.ceiling if self.ceiling is not None else 2 * max(base, MIN_RATE_PER_S)
        self._cut_at = now
        self._hold_until = max(self._hold_until, now + (retry_after if retry_after else DEFAULT_HOLD_S))
        self._tokens = 1.0  # the first send goes as the hold ends, the others at the cut rate
        self._stamp = self._hold_until
        self._grown_at = self._hold_until
        self._epoch += 1

    def _grow(self, now: float) -> None:
        if not self.adapted or self.rate is None or now <= self._grown_at:
            return
        self.rate += self._step * (now - self._grown_at)
        self._grown_at = now
        if self.rate >= self._release_at:
            self.rate, self.adapted = self.ceiling, False
