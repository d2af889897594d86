"""Circuit breakers shared through Redis: a circuit one worker opens is open on the others, ops see
every circuit and ``goalhorn breakers reset`` closes one everywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from goalhorn.admin.breakers import read_board, reset
from goalhorn.dispatch.breaker import Breakers, State
from goalhorn.dispatch.breaker_board import BreakerBoard
from goalhorn.keys import Keys
from goalhorn.providers.fcm import FcmProvider
from goalhorn.redis_client import Redis
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.settings import Settings
from tests.conftest import make_settings
from tests.processes import real_env, run_command
from tests.stages import deliver_all, delivery_stage
from tests.test_dispatch import batch_of, devices


def state_of(breakers: Breakers, circuit: str) -> State:
    return breakers[circuit].state


async def test_a_circuit_opened_on_one_worker_is_open_on_the_others_until_ops_reset_it(
    settings: Settings, redis: Redis
) -> None:
    keys = Keys(settings.namespace)
    mine, theirs = Breakers(3, 30.0), Breakers(3, 30.0)
    board_a = BreakerBoard(redis, keys, worker="host:1")
    board_b = BreakerBoard(redis, keys, worker="host:2")
    circuit = "fcm:project-1"
    await board_b.sync(theirs, force=True)
    assert theirs[circuit].admit() == 0
    for _ in range(3):
        mine[circuit].record(ok=False)
    assert state_of(mine, circuit) is State.OPEN
    await board_a.publish(mine)

    await board_b.sync(theirs, force=True)
    assert state_of(theirs, circuit) is State.OPEN
    assert 29 < theirs[circuit].admit() <= 30, "the other worker defers its sends for the same open time"
    (view,) = await read_board(redis, keys)
    assert (view.circuit, view.state, view.failures, view.by) == (circuit, State.OPEN, 3, "host:1")
    assert 29 < view.probe_in_s <= 30

    assert await reset(redis, keys, circuit)
    await board_a.sync(mine, force=True)
    await board_b.sync(theirs, force=True)
    assert (state_of(mine, circuit), state_of(theirs, circuit)) == (State.CLOSED, State.CLOSED)
    assert mine[circuit].admit() == theirs[circuit].admit() == 0
    (view,) = await read_board(redis, keys)
    assert (view.state, view.failures, view.by) == (State.CLOSED, 0, "ops")
    assert not await reset(redis, keys, "fcm:nobody"), "an unknown circuit is not invented"


async def test_a_success_on_one_worker_closes_the_circuit_everywhere_and_old_news_is_ignored(
    settings: Settings, redis: Redis
) -> None:
    keys = Keys(settings.namespace)
    now = [1000.0]
    mine = Breakers(2, 10.0, clock=lambda: now[0], wall=lambda: now[0])
    theirs = Breakers(2, 10.0, clock=lambda: now[0], wall=lambda: now[0])
    board_a, board_b = BreakerBoard(redis, keys, worker="a"), BreakerBoard(redis, keys, worker="b")
    mine["c"].record(ok=False)
    mine["c"].record(ok=False)
    await board_a.publish(mine)
    await board_b.sync(theirs, force=True)
    assert state_of(theirs, "c") is State.OPEN
    now[0] += 11
    assert theirs["c"].admit() == 0, "the probe goes out on the other worker"
    theirs["c"].record(ok=True)
    await board_b.publish(theirs)
    await board_a.sync(mine, force=True)
    assert state_of(mine, "c") is State.CLOSED
    await board_a.sync(mine, force=True)
    assert state_of(mine, "c") is State.CLOSED, "its own transition read back changes nothing"


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[FcmSandbox]:
    async with FcmSandbox() as server:
        server.service_account(tmp_path / "sa.json")
        yield server


@pytest.mark.real
async def test_goalhorn_breakers_shows_the_workers_open_circuit_and_reset_closes_it(
    fcm: FcmSandbox, tmp_path: Path
) -> None:
    settings = make_settings(
        "real",
        fcm_credentials_file=str(tmp_path / "sa.json"),
        fcm_base_url=fcm.url,
        breaker_failure_threshold=3,
        breaker_open_s=60,
        delivery_max_attempts=1,
    )
    env = real_env(GOALHORN_NAMESPACE=settings.namespace)
    circuit = f"fcm:{fcm.project_id}"
    fcm.unavailable_for(60)
    async with delivery_stage(settings, FcmProvider(settings)) as (stage, redis):
        await deliver_all(stage, redis, [batch_of(devices(3)).encode()], 30)
        listed = await asyncio.to_thread(run_command, ["breakers", "--json"], env)
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)
        assert (row["circuit"], row["state"]) == (circuit, "open")
        assert row["failures"] == 3
        assert 50 < row["probe_in_s"] <= 60

        closed = await asyncio.to_thread(run_command, ["breakers", "reset", circuit], env)
        assert closed.returncode == 0, closed.stderr
        fcm.unavailable_for(0)
        await asyncio.sleep(1.1)  # the worker's sync interval
        snap = await deliver_all(stage, redis, [batch_of(devices(4), intent_id="i-2").encode()], 30)
        assert stage._deliverer is not None
        assert stage._deliverer.breakers[circuit].state is State.CLOSED
    assert snap.get("breaker_deferred") == 0, "the reset circuit let the next batch straight through"
    assert snap.get("delivery:fcm:sent") == 4
    unknown = run_command(["breakers", "reset", "fcm:nope"], env)
    assert unknown.returncode == 2
    assert "no circuit 'fcm:nope'" in unknown.stderr


async def test_every_circuit_in_use_is_listed_and_a_newcomer_does_not_reset_its_failures(
    settings: Settings, redis: Redis
) -> None:
    keys = Keys(settings.namespace)
    first, second = Breakers(5, 30.0), Breakers(5, 30.0)
    first["webhook:https://a.example/hook"].record(ok=True)
    for _ in range(2):
        first["fcm:p"].record(ok=False)
    await BreakerBoard(redis, keys, worker="w1").publish(first)
    second["fcm:p"].admit()  # another worker's first use of it
    await BreakerBoard(redis, keys, worker="w2").publish(second)

    views = {v.circuit: (v.state, v.failures) for v in await read_board(redis, keys)}
    assert views == {"webhook:https://a.example/hook": (State.CLOSED, 0), "fcm:p": (State.CLOSED, 2)}
