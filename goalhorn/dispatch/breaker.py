"""Circuit breakers: stop sending to a provider (or one webhook endpoint) that keeps failing.

A circuit is closed (sends go out), open (sends are deferred for ``open_s``) or half-open (one
probe goes out; its answer closes the circuit again or re-opens it). Only provider-side failures
count (5xx, 429, auth, timeouts: retryable failures and whole-batch ``ProviderError`` s); a per-token
error (unregistered, bad device token) is a working provider answering, so it counts as success.
Breakers live in each worker process: every process learns a provider's health on its own.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PROBE_WAIT_S = 0.5
"""How long a send waits while another one probes a half-open circuit."""


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    threshold: int
    open_s: float
    clock: Callable[[], float] = time.monotonic
    state: State = State.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    probe_at: float = 0.0
    opened_count: int = field(default=0)

    def admit(self) -> float:
        """0 if a send may go out now, else how many seconds to defer it."""
        now = self.clock()
        if self.state is State.OPEN:
            left = self.opened_at + self.open_s - now
            if left > 0:
                return left
            self.state, self.probing = State.HALF_OPEN, False
        if self.state is State.HALF_OPEN:
            # A probe that never reported (its send was cancelled) does not block the circuit for good.
            if self.probing and now - self.probe_at < self.open_s:
                return min(PROBE_WAIT_S, self.open_s)
            self.probing, self.probe_at = True, now
        return 0.0

    def abstain(self) -> None:
        """An admitted send that never reached the provider (its message could not be built): the
        circuit learns nothing, and a half-open probe slot it took is free for the next send."""
        if self.state is State.HALF_OPEN:
            self.probing = False

    def record(self, ok: bool) -> None:
        if ok:
            self.state, self.failures, self.probing = State.CLOSED, 0, False
            return
        self.failures += 1
        if self.state is State.HALF_OPEN or self.failures >= self.threshold:
            if self.state is not State.OPEN:
                self.opened_count += 1
            self.state, self.opened_at, self.probing = State.OPEN, self.clock(), False


class Breakers:
    """One breaker per circuit name (``Provider.circuit``), made on first use."""

    def __init__(self, threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._open_s = open_s
        self._clock = clock
        self._circuits: dict[str, CircuitBreaker] = {}

    def __getitem__(self, circuit: str) -> CircuitBreaker:
        breaker = self._circuits.get(circuit)
        if breaker is None:
            breaker = self._circuits[circuit] = CircuitBreaker(self._threshold, self._open_s, self._clock)
        return breaker

    def states(self) -> dict[str, State]:
        return {name: breaker.state for name, breaker in self._circuits.items()}
