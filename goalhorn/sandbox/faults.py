"""Fault windows a running sandbox can be told to open, per provider, and its count of what it answered.

A window lasts a number of seconds and applies to every push of its provider, or only to the targets
(FCM or APNs token, webhook endpoint name) that start with its ``prefix``:

- ``status``: answer with that status (503, 500, 429...) and, if given, ``Retry-After``;
- ``hang``: hold the request unanswered until the window ends (or the client gives up), then answer
  it normally;
- ``quota``: accept up to ``quota_per_s`` pushes per second and answer the rest 429 with
  ``Retry-After``, as a provider's rate limit does.

:class:`Faults` also counts the push requests its provider received and the statuses it answered
them with, so a test can tell what reached the provider from what it accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["status", "hang", "quota"]
MODES: tuple[Mode, ...] = ("status", "hang", "quota")


@dataclass(frozen=True, slots=True)
class Refusal:
    """How to answer a push a window refuses."""

    status: int
    retry_after: int | None


@dataclass(frozen=True, slots=True)
class FaultWindow:
    mode: Mode
    until: float
    """``time.monotonic()`` at which it ends."""
    status: int = 503
    retry_after: int | None = None
    quota_per_s: float = 0.0
    prefix: str = ""

    def applies(self, target: str, now: float) -> bool:
        return now < self.until and target.startswith(self.prefix)

    @classmethod
    def from_json(cls, document: Any) -> FaultWindow:
        """A window from the control endpoint's JSON (``mode``, ``seconds`` and the mode's fields);
        raises ValueError naming what is wrong."""
        if not isinstance(document, dict):
            raise ValueError("expected a JSON object")
        mode = document.get("mode", "status")
        if mode not in MODES:
            raise ValueError(f"mode: one of {', '.join(MODES)}")
        seconds = document.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 < seconds <= 3600:
            raise ValueError("seconds: a number in (0, 3600]")
        status = document.get("status", 429 if mode == "quota" else 503)
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            raise ValueError("status: an HTTP error status (400-599)")
        retry_after = document.get("retry_after")
        if retry_after is not None and (not isinstance(retry_after, int) or isinstance(retry_after, bool)):
            raise ValueError("retry_after: whole seconds")
        quota = document.get("quota_per_s", 0.0)
        if mode == "quota" and (not isinstance(quota, int | float) or isinstance(quota, bool) or quota <= 0):
            raise ValueError("quota_per_s: a positive number (mode quota)")
        prefix = document.get("prefix", "")
        if not isinstance(prefix, str):
            raise ValueError("prefix: a string")
        return cls(mode, time.monotonic() + seconds, status, retry_after, float(quota), prefix)


class Faults:
    """The open windows of one provider and the tally of its push requests."""

    def __init__(self) -> None:
        self.windows: list[FaultWindow] = []
        self.received = 0
        """Push requests that reached the server (refused ones included)."""
        self.answered: Counter[int] = Counter()
        """Push requests answered, per status."""
        self.hanging = 0
        """Requests held by a ``hang`` window right now."""
        self._second = 0
        self._in_second = 0

    def open(self, window: FaultWindow) -> None:
        now = time.monotonic()
        self.windows = [w for w in self.windows if w.until > now] + [window]

    def clear(self) -> None:
        self.windows = []

    async def verdict(self, target: str) -> Refusal | None:
        """None: answer ``target``'s push normally; otherwise how to refuse it. A ``hang`` window
        holds the caller here until it ends."""
        now = time.monotonic()
        for window in self.windows:
            if not window.applies(target, now):
                continue
            if window.mode == "status":
                return Refusal(window.status, window.retry_after)
            if window.mode == "hang":
                self.hanging += 1
                try:
                    await asyncio.sleep(window.until - now)
                finally:
                    self.hanging -= 1
                return None
            second = int(time.time())
            if second != self._second:
                self._second, self._in_second = second, 0
            if self._in_second >= window.quota_per_s:
                return Refusal(window.status, 1 if window.retry_after is None else window.retry_after)
            self._in_second += 1
        return None

    def count(self, status: int) -> None:
        self.answered[status] += 1

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "received": self.received,
            "answered": {str(status): n for status, n in sorted(self.answered.items())},
            "hanging": self.hanging,
            "open_windows": sum(1 for w in self.windows if w.until > now),
        }
