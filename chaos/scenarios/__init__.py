"""The scenarios, each a function ``(ctx) -> Row``, in the order the suite runs them.

Every scenario builds its own deployment (its own namespace; its own Redis server when it restarts
or fails Redis) on the suite's services, so one scenario's damage never leaks into the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.deployment import LedgerReport, goal_intent
from chaos.report import Row
from chaos.rig import BASE_ENV, ChaosDeployment, Loop
from chaos.services import RedisServer, Services
from goalhorn.models import Intent


@dataclass
class Context:
    """What a scenario is given: the suite's services, the loop for async helpers, the mode (quick:
    smaller audiences), where its processes' logs go, and the Redis server scenarios share."""

    services: Services
    loop: Loop
    quick: bool
    work: Path
    redis: RedisServer = field(init=False)

    def __post_init__(self) -> None:
        self.redis = self.services.redis_server()

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @contextmanager
    def deployment(
        self, name: str, *, redis_url: str | None = None, env: dict[str, str] | None = None
    ) -> Iterator[ChaosDeployment]:
        """A deployment in a namespace of its own on the suite's RabbitMQ and ``redis_url`` (default:
        the shared server)."""
        with ChaosDeployment(
            self.work / name,
            self.loop,
            redis_url=redis_url or self.redis.url,
            amqp_url=self.services.rabbit.url,
            namespace=f"chaos{name.replace('-', '')[:24]}{int(time.time()) % 10000}",
            env=BASE_ENV | (env or {}),
        ) as deployment:
            yield deployment


Scenario = Callable[[Context], Row]

IDLE_S = 60.0
"""A scenario stops waiting for pushes after this long without a new one (what is missing then is lost)."""


def goal(deployment: ChaosDeployment, team: str, n: int, **fields: Any) -> Intent:
    """The bench's goal intent with a collapse key of its own: two goals sharing one would let the
    newer supersede the older on a device that has not got it yet (by design), and the ledger
    expects every goal."""
    return goal_intent(deployment.namespace, team, n, collapse_key=f"chaos:{team}:{n}", **fields)


def drained(row: Row, report: LedgerReport, started: float) -> None:
    last = report.last_at()
    if last is not None:
        row.notes.append(f"the last expected push {last.timestamp() - started:.1f} s after the first publish")


def wait_pushes(deployment: ChaosDeployment, n: int, timeout_s: float = 120.0) -> bool:
    """Until the sandbox recorded ``n`` pushes (False on timeout)."""
    deadline = time.monotonic() + timeout_s
    while deployment.ledger.pushes < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def kill_bound(deployment: ChaosDeployment, killed_deliver: int) -> int:
    """The most pushes that can be duplicated by killing ``killed_deliver`` deliver processes: those in
    flight in them (each thread's batch, the critical lane's own threads included), accepted by the
    provider before their marker was written."""
    settings = deployment.settings()
    threads = settings.worker_threads + int(getattr(settings, "critical_worker_threads", 0))
    return killed_deliver * threads * settings.batch_size


def all_scenarios() -> list[tuple[str, Scenario]]:
    from chaos.scenarios import hostile, load, processes, providers, rabbitmq, redis

    return [
        ("worker-sigkill", processes.worker_sigkill),
        ("rabbitmq-stopped-21s", rabbitmq.stopped),
        ("rabbitmq-sigkill", rabbitmq.killed),
        ("amqp-black-hole-45s", rabbitmq.black_hole),
        ("redis-restarted-empty", redis.restarted_empty),
        ("redis-down-45s-aof", redis.down_with_aof),
        ("redis-failover", redis.failover),
        ("fcm-503-30s", providers.fcm_unavailable),
        ("unregistered-30pct", providers.unregistered),
        ("hanging-webhooks-250", providers.hanging_webhooks),
        ("fcm-429-storm", providers.quota_storm),
        ("low-priority-flood", load.flood),
        ("hostile-input", hostile.hostile_input),
    ]
