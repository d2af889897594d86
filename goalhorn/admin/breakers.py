"""The circuit breakers the delivery workers share (``goalhorn.dispatch.breaker_board``), as ops see
them: every circuit with its state, and closing one on every worker."""

from __future__ import annotations

import time
from dataclasses import dataclass

from goalhorn.dispatch.breaker import State, Transition
from goalhorn.dispatch.breaker_board import decode, encode
from goalhorn.keys import Keys
from goalhorn.redis_client import Redis


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class BreakerView:
    """One circuit as ``goalhorn breakers`` shows it."""

    circuit: str
    state: State
    failures: int
    changed_at: float
    by: str
    probe_in_s: float
    """Seconds until an open circuit lets a probe out; 0 when closed or when a probe is due."""


async def read_board(redis: Redis, keys: Keys, now: float | None = None) -> list[BreakerView]:
    """Every circuit any worker shared, by name; an open one whose time is over shows half-open."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.breakers())
    pipe.hgetall(keys.breaker_failures())
    transitions, failures = await pipe.execute()
    counts = {_text(k): int(v) for k, v in failures.items()}
    wall = time.time() if now is None else now
    out = []
    for circuit in sorted({_text(k) for k in transitions} | set(counts)):
        raw = transitions.get(circuit.encode()) or transitions.get(circuit)
        transition = decode(raw) if raw is not None else None
        if transition is None:
            transition = Transition(State.CLOSED, 0.0)
        state, probe_in = transition.state, 0.0
        if state is State.OPEN:
            probe_in = max(0.0, transition.open_until - wall)
            state = State.OPEN if probe_in > 0 else State.HALF_OPEN
        out.append(BreakerView(circuit, state, counts.get(circuit, 0), transition.changed_at, transition.by, probe_in))
    return out


async def reset(redis: Redis, keys: Keys, circuit: str, by: str = "ops") -> bool:
    """Close a circuit on every worker (they adopt it at their next sync); False if no worker ever
    shared a circuit of that name."""
    pipe = redis.pipeline(transaction=False)
    pipe.hexists(keys.breakers(), circuit)
    pipe.hexists(keys.breaker_failures(), circuit)
    known = await pipe.execute()
    if not any(known):
        return False
    pipe = redis.pipeline(transaction=False)
    pipe.hset(keys.breakers(), circuit, encode(Transition(State.CLOSED, time.time(), 0.0, by)))
    pipe.hset(keys.breaker_failures(), circuit, 0)
    await pipe.execute()
    return True
