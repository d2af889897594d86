"""What tests steer on every sandbox server: outage windows, stalls, and the count of what was accepted."""

from __future__ import annotations

import asyncio
import time
from collections import Counter


class Steering:
    """Failure windows and stalls shared by the FCM and APNs sandboxes; ``received`` counts accepted
    pushes per target (token or fid)."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.stalled = 0
        """Pushes held by :meth:`stall_after` right now."""
        self._unavailable_until = 0.0
        self._stall_after: int | None = None
        self._unstalled = asyncio.Event()

    def unavailable_for(self, seconds: float) -> None:
        """Answer every push as unavailable (503) for the next ``seconds``."""
        self._unavailable_until = time.monotonic() + seconds

    @property
    def unavailable(self) -> bool:
        return time.monotonic() < self._unavailable_until

    def stall_after(self, n: int | None) -> None:
        """After ``n`` accepted pushes in total, hold further ones unanswered until ``stall_after(None)``."""
        self._stall_after = n
        if n is None:
            self._unstalled.set()
        else:
            self._unstalled.clear()

    def release_stalled(self) -> None:
        self._unstalled.set()

    @property
    def delivered(self) -> int:
        return sum(self.received.values())

    async def accept(self, target: str) -> None:
        """Count one accepted push, after any stall (a push cancelled while held is not counted)."""
        if self._stall_after is not None and self.delivered >= self._stall_after:
            self.stalled += 1
            try:
                await self._unstalled.wait()
            finally:
                self.stalled -= 1
        self.received[target] += 1
