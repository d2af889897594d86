"""The delivery stage's promises: at-least-once with no duplicate effect, on both backends."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from typing import Any

import pytest

from goalhorn.catalog import default_catalog
from goalhorn.dispatch.stage import DeliveryStage, DeliveryWorker, make_broker
from goalhorn.keys import Keys, Platform
from goalhorn.models import DeliveryBatch, Device, Intent
from goalhorn.providers import Provider
from goalhorn.providers.console import ConsoleProvider
from goalhorn.settings import Settings
from tests.conftest import delete_namespace, make_settings
from tests.stages import deliver_all, delivery_stage
from tests.support.builders import make_intent


def make_batch(n: int, intent: Intent | None = None) -> DeliveryBatch:
    devices = tuple(
        Device(device_id=f"d{i:04d}", user_id=f"u{i:04d}", platform="fcm", address=f"tok{i}") for i in range(n)
    )
    return DeliveryBatch(batch_id="b-1", platform="fcm", intent=intent or make_intent(), devices=devices)


class CrashingHalfway(Provider):
    """Sends ``crash_after`` devices, then fails every send for ``down_s``: a worker dying mid-batch."""

    platform: Platform = "fcm"

    def __init__(self, inner: ConsoleProvider, crash_after: int, down_s: float = 0.5) -> None:
        self.inner = inner
        self.crash_after = crash_after
        self.down_s = down_s
        self.sent_before_crash = 0
        self.crashed_at: float | None = None

    async def send(self, batch: DeliveryBatch) -> list:
        now = asyncio.get_running_loop().time()
        if self.crashed_at is None and self.sent_before_crash >= self.crash_after:
            self.crashed_at = now
        if self.crashed_at is not None and now - self.crashed_at < self.down_s:
            raise RuntimeError("worker died after sending half the batch")
        if self.crashed_at is None:
            self.sent_before_crash += len(batch.devices)
        return await self.inner.send(batch)


def pushes(out: io.StringIO) -> Counter[tuple[str, str]]:
    """(intent_id, device_id) of every console line."""
    seen: Counter[tuple[str, str]] = Counter()
    for line in out.getvalue().splitlines():
        _, device_id, intent_id = line.split(" | ", 1)[0].split()
        seen[(intent_id, device_id)] += 1
    return seen


async def run_stage(settings: Settings, provider: Provider, batches: list[DeliveryBatch], timeout_s: float = 30):
    async with delivery_stage(settings, provider) as (stage, redis):
        return await deliver_all(stage, redis, [batch.encode() for batch in batches], timeout_s)


async def test_crash_after_half_a_batch_redelivers_without_duplicates(backend: str) -> None:
    # A crashing provider would open its breaker; this test is about leases, so it stays closed.
    settings = make_settings(backend, claim_lease_s=1, breaker_failure_threshold=10_000)
    out = io.StringIO()
    provider = CrashingHalfway(ConsoleProvider("fcm", out), crash_after=200)
    snap = await run_stage(settings, provider, [make_batch(400)])

    assert provider.crashed_at is not None
    seen = pushes(out)
    assert len(seen) == 400, "every device got the goal"
    assert set(seen.values()) == {1}, "and nobody got it twice"
    # The crashed half spent an attempt and came back once its kept claims had lapsed.
    assert snap.get("retries") == 200
    assert snap.get("delivery:fcm:sent") == 400


async def test_replayed_batch_sends_nothing_twice(backend: str) -> None:
    settings = make_settings(backend)
    out = io.StringIO()
    batch = make_batch(120)
    await run_stage(settings, ConsoleProvider("fcm", out), [batch])
    snap = await run_stage(settings, ConsoleProvider("fcm", out), [batch])  # replayed, e.g. from a DLQ

    assert set(pushes(out).values()) == {1}
    assert len(pushes(out)) == 120
    assert snap.get("duplicates_skipped") == 120


async def test_expired_intent_is_dropped_not_sent_late(backend: str) -> None:
    settings = make_settings(backend)
    out = io.StringIO()
    batch = make_batch(10, make_intent(ttl_s=0.2))
    await asyncio.sleep(0.3)
    snap = await run_stage(settings, ConsoleProvider("fcm", out), [batch])

    assert out.getvalue() == ""
    assert snap.get("delivery:fcm:expired") == 10


@pytest.mark.parametrize("backend", ["embedded"])
async def test_unreadable_batch_is_quarantined(backend: str) -> None:
    settings = make_settings(backend)
    stage = DeliveryStage(
        settings, make_broker(settings), lambda p, render: ConsoleProvider(p), default_catalog().render
    )
    from goalhorn.redis_client import make_redis

    redis = make_redis(settings)
    worker = DeliveryWorker(stage)
    worker.start()
    try:
        stage.actors["fcm"].send_with_options(args=('{"not": "a batch"}',))
        async with asyncio.timeout(10):
            while not await redis.xlen(Keys(settings.namespace).dead_letters()):
                await asyncio.sleep(0.05)
        entries: Any = await redis.xrange(Keys(settings.namespace).dead_letters())
        assert entries[0][1][b"reason"].startswith(b"invalid batch")
    finally:
        await asyncio.to_thread(worker.stop)
        stage.close()
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
