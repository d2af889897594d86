"""``goalhorn pause|resume PROVIDER`` with traffic flowing on two workers: the paused provider's
batches wait in RabbitMQ (ready, not held unacked), the others flow, and after the resume every
device gets its push exactly once."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from goalhorn.catalog import default_catalog
from goalhorn.counters import PipelineCounters
from goalhorn.dispatch.pause import POLL_S
from goalhorn.dispatch.stage import DeliveryStage, make_broker
from goalhorn.keys import PLATFORMS, Keys, Platform
from goalhorn.models import DeliveryBatch, Device
from goalhorn.providers.console import ConsoleProvider
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings
from tests.processes import Process, exports, free_port, processes, read_records, real_env, run_command
from tests.support.builders import make_intent

pytestmark = pytest.mark.real


def batch(platform: Platform, n: int) -> DeliveryBatch:
    def address(i: int) -> str:
        return f"{n:06d}{i:058x}" if platform == "apns" else f"f{n:05d}{i}" + "Ab9_-:" * 24

    devices = tuple(
        Device(device_id=f"{platform}-{n}-{i}", user_id=f"u{i}", platform=platform, address=address(i))
        for i in range(5)
    )
    return DeliveryBatch(batch_id=f"b-{platform}-{n}", platform=platform, intent=make_intent(f"i-{n}"), devices=devices)


def sent(record: Path, platform: str) -> Counter[str]:
    """Pushes the sandbox accepted, per token, of one provider."""
    return Counter(r["token"] for r in read_records(record) if r["provider"] == platform)


def metric(process: Process, name: str, labels: str) -> float | None:
    port = process.wait_for(r"health and metrics on http://127\.0\.0\.1:(\d+)").group(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


@asynccontextmanager
async def traffic(stage: DeliveryStage, counters: PipelineCounters) -> AsyncIterator[list[int]]:
    """An fcm and an apns batch every 50 ms until the block ends; yields how many of each went out."""
    published = [0]

    async def publish() -> None:
        while True:
            for platform in PLATFORMS[:2]:
                await stage.enqueue(batch(platform, published[0]).encode())
                await counters.add({"batches_published": 1})
            published[0] += 1
            await asyncio.sleep(0.05)

    task = asyncio.create_task(publish())
    try:
        yield published
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.timeout(180)
async def test_pause_and_resume_with_traffic_on_two_workers(tmp_path: Path) -> None:
    record = tmp_path / "pushes.jsonl"
    env = real_env(GOALHORN_WORKER_THREADS="2")
    settings = Settings(
        amqp_url=env["GOALHORN_AMQP_URL"], redis_url=env["GOALHORN_REDIS_URL"], namespace=env["GOALHORN_NAMESPACE"]
    )
    keys = Keys(settings.namespace)
    # This process only enqueues: the two `goalhorn run deliver` deliver.
    stage = DeliveryStage(
        settings, make_broker(settings), lambda platform, render: ConsoleProvider(platform), default_catalog().render
    )
    redis = make_redis(settings)
    counters = PipelineCounters(redis, keys)
    with processes(tmp_path) as running:
        ports = ["--fcm-port", str(free_port()), "--apns-port", str(free_port()), "--webhook-port", str(free_port())]
        sandbox = Process(
            "sandbox", ["sandbox", "--dir", str(tmp_path / "sb"), "--record", str(record), *ports], env, tmp_path
        )
        running["sandbox"] = sandbox.start()
        sandbox.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
        env.update(exports(sandbox.lines))
        workers = [Process(f"deliver-{n}", ["run", "deliver", "--metrics-port", "0"], env, tmp_path) for n in (1, 2)]
        for process in workers:
            running[process.name] = process.start()
        for process in workers:
            process.wait_for(r"running \(namespace")
        try:
            async with traffic(stage, counters) as published:
                await asyncio.sleep(1.5)
                assert sum(sent(record, "fcm").values()) > 0, "traffic flows before the pause"
                paused = await asyncio.to_thread(run_command, ["pause", "fcm", "--reason", "test"], env)
                assert paused.returncode == 0, paused.stderr
                await asyncio.sleep(POLL_S + 1.0)  # the stated bound, and the batches in hand
                fcm_at_pause, apns_at_pause = len(sent(record, "fcm")), len(sent(record, "apns"))
                assert [metric(p, "goalhorn_provider_paused", 'platform="fcm"') for p in workers] == [1.0, 1.0]
                await asyncio.sleep(2.0)
                stats = await asyncio.to_thread(run_command, ["queues", "stats", "--json"], env)
                assert len(sent(record, "fcm")) == fcm_at_pause, "no fcm push while paused"
                assert len(sent(record, "apns")) > apns_at_pause, "apns kept flowing"
            rows = {row["name"]: row for row in json.loads(stats.stdout)}
            waiting = 0
            for fcm_queue in keys.delivery_queues("fcm"):  # every lane; the traffic's goals are critical
                queue, delayed = rows[fcm_queue], rows[fcm_queue + ".DQ"]
                assert queue["paused"] is True
                assert (queue["consumers"], queue["unacked"]) == (0, 0), "no worker takes or holds its batches"
                waiting += queue["ready"] + delayed["ready"] + delayed["unacked"]
            assert waiting > 0, "they wait in RabbitMQ"
            assert rows[keys.delivery_queue("fcm", "critical")]["ready"] > 0, "in their lane"
            for apns_queue in keys.delivery_queues("apns"):
                assert rows[apns_queue]["paused"] is False
                assert rows[apns_queue]["consumers"] == 2

            resumed = await asyncio.to_thread(run_command, ["resume", "fcm"], env)
            assert resumed.returncode == 0, resumed.stderr
            resumed_at = time.monotonic()
            while [metric(p, "goalhorn_provider_paused", 'platform="fcm"') for p in workers] != [0.0, 0.0]:
                assert time.monotonic() - resumed_at < POLL_S + 1.0, "every worker resumes within the bound"
                await asyncio.sleep(0.05)
            async with asyncio.timeout(60):
                while True:
                    snap = await counters.snapshot()
                    if snap.get("batches_done") >= snap.get("batches_published"):
                        break
                    await asyncio.sleep(0.1)
            logs = [p.log() for p in workers]
        finally:
            stage.close()
            stage.broker.close()
            await redis.aclose()

    for platform in PLATFORMS[:2]:
        got = sent(record, platform)
        wanted = {d.address for n in range(published[0]) for d in batch(platform, n).devices}
        assert wanted <= set(got), f"every {platform} device got its push"
        assert set(got.values()) == {1}, f"and only one ({platform})"
    assert all("provider fcm paused" in log and "provider fcm resumed" in log for log in logs), "both workers"


def test_pause_refuses_an_unknown_provider() -> None:
    env = real_env()
    result = run_command(["pause", "sms"], env)
    assert result.returncode == 2
    assert "'sms' is not a provider" in result.stderr
