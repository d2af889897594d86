"""Exponential backoff with jitter, for every stage and layer (the bus, ingest, fanout, delivery).

The n-th consecutive failure waits about ``base * 2**(n-1)``, capped at ``cap``, drawn uniformly
from its upper half so that many clients that failed together do not retry together ("equal
jitter"). :func:`delay_s` is the formula for callers that carry the failure count themselves (in a
message's options, say); :class:`Backoff` counts for a caller that retries in a loop.
"""

from __future__ import annotations

import random


def delay_s(base_s: float, cap_s: float, failures: int, rng: random.Random | None = None) -> float:
    """How long to wait after the ``failures``-th consecutive failure (1 for the first): between half
    and all of ``min(cap, base * 2**(failures-1))``."""
    ceiling = min(cap_s, base_s * float(2 ** min(max(failures, 1) - 1, 30)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class Backoff:
    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        self.failures += 1
        return delay_s(self.base_s, self.cap_s, self.failures, self._rng)

    def reset(self) -> None:
        self.failures = 0
