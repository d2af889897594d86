"""Circuit breakers: stop sending to a provider (or one webhook endpoint) that keeps failing.

A circuit is closed (sends go out), open (sends are deferred for ``open_s``) or half-open (one
probe goes out; its answer closes the circuit again or re-opens it). It is consulted for each request
at the moment it would go out (``admit``), and counts the requests it let out until they report
(``record`` / ``abstain``). A closed circuit that has not proven healthy yet (no success since it
was made or since it last opened) lets out only as many requests as could still fail before it
opens (``threshold - failures - in flight``); the others wait for an answer (``BUSY``). So a
provider that fails every request gets at most ``threshold`` of them, then one probe per open
period; once a request succeeded, failures no longer hold sends back until the circuit opens.

Only provider-side failures count (5xx, 429, auth, timeouts: retryable failures and whole-batch
``ProviderError`` s); a per-token error (unregistered, bad device token) is a working provider
answering, so it counts as success.
Each worker keeps its breakers in memory, so the hot path never waits on Redis, and shares their
transitions through Redis (:mod:`goalhorn.dispatch.breaker_board`): a circuit one worker opened is
open on every worker within a sync interval, ops can see every circuit (``goalhorn breakers``) and
close one (``goalhorn breakers reset``). The newest transition wins; failure counts are shown, not
merged.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

PROBE_WAIT_S = 0.5
"""How long a send waits while another one probes a half-open circuit."""
BUSY = -1.0
"""``admit``: not now, but soon: wait for a request in flight to report, then ask again."""


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    """A circuit's last state change as shared through Redis (wall-clock times)."""

    state: State
    changed_at: float
    open_until: float = 0.0
    """For ``open``: when a probe may go out."""
    by: str = ""
    """Who made it: a worker (host:pid) or ``ops``."""


@dataclass(slots=True)
class CircuitBreaker:
    threshold: int
    open_s: float
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    state: State = State.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    probe_at: float = 0.0
    opened_count: int = field(default=0)
    changed_at: float = 0.0
    """Wall-clock time of the last transition this breaker made or adopted."""
    unshared: Transition | None = None
    """A transition made here that is not in Redis yet."""
    failures_unshared: bool = False
    registered: bool = False
    """Whether the circuit is listed in Redis yet (``goalhorn breakers`` lists every circuit in use)."""
    in_flight: int = 0
    """Requests admitted that have not reported yet."""
    proven: bool = False
    """The last answer was a success: requests go out without a ramp."""

    def admit(self) -> float:
        """0 if a request may go out now (it is then in flight until ``record`` or ``abstain``);
        ``BUSY`` if it should wait for one in flight to report; else how many seconds to defer it."""
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
        elif not self.proven and self.in_flight + self.failures >= self.threshold:
            return BUSY
        self.in_flight += 1
        return 0.0

    def abstain(self) -> None:
        """An admitted send that never reached the provider (its message could not be built, its address
        was refused, it was cancelled): the circuit learns nothing, and a half-open probe slot it took is
        free for the next send."""
        self.in_flight = max(0, self.in_flight - 1)
        if self.state is State.HALF_OPEN:
            self.probing = False

    def record(self, ok: bool) -> None:
        """The answer of an admitted request: ``ok`` unless the provider itself failed."""
        self.in_flight = max(0, self.in_flight - 1)
        if ok:
            self.proven = True
            if self.state is not State.CLOSED:
                self._transition(State.CLOSED)
            if self.failures:
                self.failures, self.failures_unshared = 0, True
            self.state, self.probing = State.CLOSED, False
            return
        self.failures += 1
        self.failures_unshared = True
        # A failure proves nothing healthy any more: until an answer succeeds, only what could still
        # fail before the circuit opens goes out (a provider that starts failing under full
        # concurrency would otherwise get every request in hand before the threshold is reached).
        self.proven = False
        if self.state is State.HALF_OPEN or self.failures >= self.threshold:
            if self.state is not State.OPEN:
                self.opened_count += 1
            self.state, self.opened_at, self.probing, self.proven = State.OPEN, self.clock(), False, False
            self._transition(State.OPEN)

    def _transition(self, state: State) -> None:
        now = self.wall()
        self.changed_at = now
        until = now + self.open_s if state is State.OPEN else 0.0
        self.unshared = Transition(state, now, until)

    def adopt(self, shared: Transition) -> bool:
        """Take a transition made elsewhere if it is newer than this breaker's last one."""
        if shared.changed_at <= self.changed_at:
            return False
        self.changed_at, self.unshared, self.probing = shared.changed_at, None, False
        if shared.state is State.OPEN:
            left = shared.open_until - self.wall()
            if self.state is not State.OPEN:
                self.opened_count += 1
            self.state, self.opened_at, self.proven = State.OPEN, self.clock() - (self.open_s - left), False
        else:
            self.state, self.failures = State.CLOSED, 0
        return True

    @property
    def idle(self) -> bool:
        """Closed with no failure and nothing in flight or left to share: forgetting it loses nothing
        but its ``proven`` (a circuit made again ramps up from one request, as a new one does)."""
        return (
            self.state is State.CLOSED
            and not self.failures
            and not self.in_flight
            and not self.probing
            and self.unshared is None
            and not self.failures_unshared
            and self.registered
        )

    def probe_in(self) -> float:
        """Seconds until an open circuit lets a probe out (0 unless open)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.open_s - self.clock())


KEEP_CIRCUITS = 1024
"""Circuits a process holds before it forgets the idle ones (:attr:`CircuitBreaker.idle`): a webhook
endpoint is a circuit, and a goal to a million followers reaches some 50,000 of them."""


class Breakers:
    """One breaker per circuit name (``Provider.circuit``), made on first use. Past ``keep`` circuits,
    making one forgets every idle one first, so the process holds the circuits that matter (failing,
    open, busy) and not every endpoint it ever sent to."""

    def __init__(
        self,
        threshold: int,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        keep: int = KEEP_CIRCUITS,
    ) -> None:
        self._threshold = threshold
        self._open_s = open_s
        self._clock = clock
        self._wall = wall
        self._circuits: dict[str, CircuitBreaker] = {}
        self._keep = keep
        self._sweep_at = keep

    def __getitem__(self, circuit: str) -> CircuitBreaker:
        breaker = self._circuits.get(circuit)
        if breaker is None:
            if len(self._circuits) >= self._sweep_at:
                self._forget_idle()
            breaker = CircuitBreaker(self._threshold, self._open_s, self._clock, self._wall)
            self._circuits[circuit] = breaker
        return breaker

    def __len__(self) -> int:
        return len(self._circuits)

    def _forget_idle(self) -> None:
        for circuit in [c for c, breaker in self._circuits.items() if breaker.idle]:
            del self._circuits[circuit]
        # Swept again only once as many more are made, when most of those held are not idle.
        self._sweep_at = max(self._keep, 2 * len(self._circuits))

    def items(self) -> Iterator[tuple[str, CircuitBreaker]]:
        return iter(list(self._circuits.items()))

    def states(self) -> dict[str, State]:
        return {name: breaker.state for name, breaker in self._circuits.items()}
