"""Redis restarted empty under a running deployment, as a user runs it: ``goalhorn sandbox``,
``goalhorn run deliver`` and ``goalhorn run fanout`` as processes of their own on a redis-server
without persistence, subscribers from ``goalhorn subscribers import``. Killing Redis mid-run loses no
push silently: the fanout holds what it could not expand, says so on /readyz and /metrics, and once
the subscribers are re-imported and ``goalhorn subscribers restored`` is run, every device gets every
goal, at most one extra copy of those batched just before the loss."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from goalhorn.bus.rabbitmq import RabbitBus
from goalhorn.keys import Keys
from tests.conftest import make_settings
from tests.processes import Process, clean_env, exports, free_port, processes, read_records, run_command
from tests.support.builders import make_intent
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

FOLLOWERS = 400
GOALS = 6


def fcm_token(n: int) -> str:
    return f"f{n:04d}" + "Ab9_-:" * 24


def pushed(record: Path) -> Counter[tuple[str, str]]:
    return Counter((r["intent_id"], r["token"]) for r in read_records(record))


async def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_redis_restarted_empty_under_running_processes_loses_no_push(tmp_path: Path) -> None:
    settings = make_settings("real")
    with RedisServer() as server, processes(tmp_path) as running:
        settings = settings.model_copy(update={"redis_url": server.url})
        env = clean_env(
            GOALHORN_AMQP_URL=str(settings.amqp_url),
            GOALHORN_REDIS_URL=server.url,
            GOALHORN_NAMESPACE=settings.namespace,
            GOALHORN_BATCH_SIZE="50",
        )
        record = tmp_path / "pushes.jsonl"
        ports = ["--fcm-port", str(free_port()), "--apns-port", str(free_port()), "--webhook-port", str(free_port())]
        sandbox = Process(
            "sandbox", ["sandbox", "--dir", str(tmp_path / "sb"), "--record", str(record), *ports], env, tmp_path
        )
        running["sandbox"] = sandbox.start()
        sandbox.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
        env.update(exports(sandbox.lines))
        people = tmp_path / "subscribers.jsonl"
        rows = [
            {
                "user_id": f"fan{n:04d}",
                "devices": [{"platform": "fcm", "address": fcm_token(n)}],
                "follows": {"teams": ["6"]},
            }
            for n in range(FOLLOWERS)
        ]
        people.write_text("".join(json.dumps(row) + "\n" for row in rows))
        assert run_command(["subscribers", "import", str(people)], env).returncode == 0
        for name in ("deliver", "fanout"):
            running[name] = Process(name, ["run", name, "--metrics-port", "0"], env, tmp_path).start()
        health = running["fanout"].wait_for(r"health and metrics on (http://\S+)\)").group(1)
        running["deliver"].wait_for(r"running \(namespace")

        bus = RabbitBus(settings)
        queue = Keys(settings.namespace).intent_queue
        await bus.start([queue])
        try:
            for goal in range(GOALS):
                intent = make_intent(f"goal-{goal}", ttl_s=600).model_copy(
                    update={"segments": ("scoring_team_followers",), "team_id": "6"}
                )
                await bus.publish(queue, intent.to_json(), priority=9, message_id=intent.intent_id)
                if goal == 1:  # the first goals are on their way: Redis dies and comes back empty
                    await wait_until(lambda: len(pushed(record)) > 0, 60, "no push before the loss")
                    await asyncio.to_thread(server.restart)
        finally:
            await bus.aclose()

        async with httpx.AsyncClient(base_url=health, timeout=5) as client:
            for _ in range(150):
                ready = await client.get("/readyz")
                if ready.status_code == 503 and "Redis lost the subscriber data" in ready.text:
                    break
                await asyncio.sleep(0.2)
            assert "Redis lost the subscriber data" in ready.text, ready.text
            assert (
                'goalhorn_redis_data_lost{namespace="' + settings.namespace + '"} 1.0'
                in (await client.get("/metrics")).text
            )
            held = len({intent for intent, _ in pushed(record)})
            assert held < GOALS  # the goals published after the loss are held, not sent to nobody

            assert run_command(["subscribers", "import", str(people)], env).returncode == 0
            restored = run_command(["subscribers", "restored"], env)
            assert restored.returncode == 0, restored.stderr
            everything = {(f"goal-{g}", fcm_token(n)) for g in range(GOALS) for n in range(FOLLOWERS)}
            await wait_until(lambda: set(pushed(record)) >= everything, 120, "not every goal reached every device")
            await asyncio.sleep(2.0)  # strays would arrive by now
            assert (await client.get("/readyz")).status_code == 200

        copies = pushed(record)
        assert set(copies) == everything
        assert max(copies.values()) <= 2  # at most one extra copy: the markers were lost with Redis
        print(f"goals sent before the restore: {held}; extra copies: {sum(n - 1 for n in copies.values())}")
        for name in ("fanout", "deliver"):
            assert running[name].terminate(60) == 0, running[name].log()
