"""A request budget per upstream: at most ``limit`` requests in any ``window_s`` seconds.

Shared by every poller of one upstream (ESPN serves every league from one host). Past 80 % of the
budget a warning is logged once per window; at 100 % ``reserve`` refuses and says how long until a
request leaves the window, and the caller backs off that long instead of polling.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

USED = Gauge("goalhorn_upstream_budget_used_ratio", "Share of the request budget used in the window.", ["upstream"])
EXHAUSTED = Counter("goalhorn_upstream_budget_exhausted", "Polls skipped because the budget was spent.", ["upstream"])
WARN_AT = 0.8


class RequestBudget:
    def __init__(self, upstream: str, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a budget needs a positive limit and window")
        self.upstream = upstream
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._sent: deque[float] = deque()
        self._warned_until = float("-inf")
        self.warnings = 0
        self.refusals = 0

    def used(self) -> float:
        """The share of the budget spent in the current window."""
        self._expire(self._clock())
        return len(self._sent) / self.limit

    def reserve(self) -> float:
        """Take one request from the budget and return 0, or return the seconds to wait when spent."""
        now = self._clock()
        self._expire(now)
        if len(self._sent) >= self.limit:
            self.refusals += 1
            EXHAUSTED.labels(self.upstream).inc()
            return max(0.0, self._sent[0] + self.window_s - now)
        self._sent.append(now)
        used = len(self._sent) / self.limit
        USED.labels(self.upstream).set(used)
        if used >= WARN_AT and now >= self._warned_until:
            self.warnings += 1
            self._warned_until = now + self.window_s
            log.warning(
                "%s: %.0f%% of the request budget used (%d per %gs)",
                self.upstream,
                used * 100,
                self.limit,
                self.window_s,
            )
        return 0.0

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - self.window_s:
            self._sent.popleft()
