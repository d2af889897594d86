"""Provider quota pacing: a token bucket per provider, so a burst is smoothed instead of 429ed.

Rates are per worker process (``fcm_rate_per_s`` etc.; FCM's default project quota is 600k/min,
i.e. 10k/s over all workers). The bucket holds one second's worth, so short bursts go out at
once and a long one settles at the rate. Waiters are served in arrival order.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate_per_s
        self.capacity = max(1.0, burst if burst is not None else rate_per_s)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, n: float = 1.0) -> None:
        """Wait until ``n`` tokens are available, then spend them."""
        async with self._lock:
            self._refill()
            while self._tokens < n:
                await asyncio.sleep((n - self._tokens) / self.rate)
                self._refill()
            self._tokens -= n
