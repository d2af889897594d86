"""Exponential backoff with jitter for the layers below the stages (the bus, the segmenter).

The n-th consecutive failure waits about ``base * 2**(n-1)``, capped at ``cap``, drawn uniformly
from its upper half so that many clients that failed together do not retry together ("equal
jitter"). (``goalhorn.ingest.backoff`` holds the ingest stage's copy, which stages may not share.)
"""

from __future__ import annotations

import random


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
        ceiling = min(self.cap_s, self.base_s * float(2 ** min(self.failures - 1, 30)))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0
