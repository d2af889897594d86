"""``goalhorn status``: one screen reflecting what the pipeline is doing and what needs attention."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import time

import pytest
from typer.testing import CliRunner

from goalhorn.admin.pause import pause
from goalhorn.counters import PipelineCounters
from goalhorn.dispatch import deadletters
from goalhorn.dispatch.breaker import Breakers
from goalhorn.dispatch.breaker_board import BreakerBoard
from goalhorn.models import DeadLetter, DeadLetterCode, DeadLetterKind
from goalhorn.ops.cli import app
from goalhorn.providers.console import ConsoleProvider
from tests.conftest import make_settings
from tests.processes import GOALHORN, clean_env, real_env, run_command
from tests.stages import delivery_stage
from tests.test_dispatch import batch_of, devices

pytestmark = pytest.mark.real


async def test_status_shows_throughput_queues_pauses_breakers_dead_letters_and_stale_games() -> None:
    settings = make_settings("real")
    env = real_env(GOALHORN_NAMESPACE=settings.namespace)
    async with delivery_stage(settings, ConsoleProvider("fcm", io.StringIO())) as (stage, redis):
        keys = stage.keys
        await pause(redis, keys, "apns", "tester", "vendor incident")
        breakers = Breakers(2, 120.0)
        for _ in range(2):
            breakers["fcm:project-9"].record(ok=False)
        await BreakerBoard(redis, keys, worker="w1").publish(breakers)
        await deadletters.write(
            redis,
            keys,
            DeadLetter(
                kind=DeadLetterKind.BATCH,
                code=DeadLetterCode.ATTEMPTS_EXHAUSTED,
                detail="attempts exhausted (5): UNAVAILABLE x3",
                platform="webhook",
                payload="{}",
                devices=3,
            ),
        )
        for ms in [12.0] * 98 + [30.0] * 2:
            await PipelineCounters(redis, keys).add_stage_latencies({"fanout": ms})
        await redis.zadd(keys.live_games(), {"espn:401": (time.time() - 90) * 1000, "espn:402": time.time() * 1000})
        await PipelineCounters(redis, keys).add({"intents": 42, "live_intents": 60, "intents_done": 102})

        async def publish() -> None:
            for n in range(200):
                await stage.enqueue(batch_of(devices(3), intent_id=f"i-{n}").encode())
                await asyncio.sleep(0.01)

        publisher = asyncio.create_task(publish())
        result = await asyncio.to_thread(run_command, ["status", "--json", "--interval", "1.5"], env)
        screen = await asyncio.to_thread(run_command, ["status", "--interval", "0.2"], env)
        await publisher

    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["rates"]["deliver batches"] > 0
    # fanout expands both kinds of intent ingest publishes: the counts add up on the screen
    assert [status["totals"][s] for s in ("ingest", "ingest live updates", "fanout")] == [42, 60, 102]
    assert status["rates"]["sent:fcm"] > status["rates"]["sent:apns"] == 0
    assert status["latency_ms"]["delivery"]["p50"] is not None
    assert status["latency_ms"]["fanout"] == {"p50": 12.0, "p99": 30.0}
    assert status["latency_ms"]["ingest"] == {"p50": None, "p99": None}
    assert [(b["circuit"], b["state"], b["failures"]) for b in status["breakers"]] == [("fcm:project-9", "open", 2)]
    assert list(status["paused"]) == ["apns"]
    assert status["paused"]["apns"]["reason"] == "vendor incident"
    assert [(g["code"], g["platform"], g["devices"]) for g in status["dead_letters_last_hour"]] == [
        ("attempts_exhausted", "webhook", 3)
    ]
    assert status["live_games"] == 2
    assert status["oldest_live_game"] == "espn:401"
    assert 85 < status["oldest_live_state_s"] < 120
    queues = {q["name"]: q for q in status["queues"]}
    assert queues[keys.delivery_queue("apns")]["paused"] is True
    assert queues[keys.delivery_queue("fcm")]["consumers"] == 1
    assert screen.returncode == 0, screen.stderr
    for text in (
        "latency fanout (intent to expansion): p50 12 ms, p99 30 ms",
        "PAUSED apns",
        "breaker fcm:project-9 open",
        "attempts_exhausted webhook 3 devices",
        "oldest state",
    ):
        assert text in screen.stdout, text


def test_status_needs_redis() -> None:
    result = run_command(["status"], clean_env())
    assert result.returncode == 2
    assert "GOALHORN_REDIS_URL is not set" in result.stderr
    runner = CliRunner()  # in-process: the same code, without a process start each
    down_env = clean_env(GOALHORN_REDIS_URL="redis://127.0.0.1:1/0")
    for command in (["status"], ["dlq", "list"], ["breakers"], ["trace", "i-1"], ["resume", "fcm"]):
        down = runner.invoke(app, command, env=down_env)
        assert down.exit_code == 2, (command, down.output)
        assert "error: Redis does not answer" in down.stderr, (command, down.output)


def test_status_watch_refreshes_until_ctrl_c() -> None:
    env = real_env()
    watch = subprocess.Popen(
        [GOALHORN, "status", "--watch", "--every", "0.5", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(4.0)  # started and watching (a Ctrl-C while it imports is a plain KeyboardInterrupt)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=15)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    assert "goalhorn status - namespace" in out
    assert "Traceback" not in err
