"""What a delivery worker does when Redis goes away, and with anything dramatiq would dead-letter.

Redis is reached through a TCP proxy (``tests/tcpproxy.py``) that a test cuts and restores; the test
itself reads counters and markers straight from Redis. Nothing may end in dramatiq's ``.XQ`` queues
while goalhorn can still write its own dead letters, and a Redis outage must cost no delivery attempt.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest
from dramatiq.brokers.stub import StubBroker

from goalhorn.catalog import default_catalog
from goalhorn.catalog.templates import Renderer
from goalhorn.counters import PipelineCounters
from goalhorn.dispatch.stage import DeliveryStage, DeliveryWorker, make_broker
from goalhorn.keys import PLATFORMS, Keys, Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device
from goalhorn.providers import Provider
from goalhorn.redis_client import make_redis
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.settings import LOCAL_REDIS_URL, Settings
from tests.conftest import delete_namespace, make_settings
from tests.queues import delete_delivery_queues
from tests.stages import deliver_all, delivery_stage
from tests.support.builders import make_intent
from tests.tcpproxy import TCPProxy


class Recording(Provider):
    """Accepts every push and records (intent, device) and the batch attempt it came with."""

    platform: Platform = "fcm"

    def __init__(self, on_send: Callable[[int], None] | None = None) -> None:
        self.pushes: Counter[tuple[str, str]] = Counter()
        self.attempts: Counter[int] = Counter()
        self._on_send = on_send

    async def send(self, batch: DeliveryBatch) -> list[DeliveryResult]:
        for device in batch.devices:
            self.pushes[(batch.intent.intent_id, device.device_id)] += 1
            self.attempts[batch.attempt] += 1
        if self._on_send is not None:
            self._on_send(sum(self.pushes.values()))
        return [DeliveryResult(device_id=d.device_id, outcome="sent") for d in batch.devices]


class BrokenProviders:
    """A provider factory that raises, as one whose credentials cannot be read would: an exception in
    the actor before anything is claimed or sent, on every try."""

    def __init__(self, on_call: Callable[[int], None] | None = None) -> None:
        self.calls = 0
        self._on_call = on_call

    def __call__(self, platform: Platform, render: Renderer) -> Provider:
        self.calls += 1
        if self._on_call is not None:
            self._on_call(self.calls)
        raise RuntimeError("cannot build the provider")


@asynccontextmanager
async def broken_stage(settings: Settings, providers: BrokenProviders) -> AsyncIterator[DeliveryStage]:
    """A delivery stage whose providers cannot be built, with its worker running."""
    stage = DeliveryStage(settings, make_broker(settings), providers, default_catalog().render)
    worker = DeliveryWorker(stage)
    worker.start()
    try:
        yield stage
    finally:
        await asyncio.to_thread(worker.stop)
        stage.close()
        stage.broker.close()
        if settings.amqp_url:
            await delete_delivery_queues(settings)


def batch(intent_id: str, n: int) -> DeliveryBatch:
    devices = tuple(
        Device(device_id=f"d{i:03d}", user_id=f"u{i}", platform="fcm", address=f"tok-{i}") for i in range(n)
    )
    return DeliveryBatch(batch_id=f"b-{intent_id}", platform="fcm", intent=make_intent(intent_id, 600), devices=devices)


def direct(settings: Settings) -> Settings:
    """The same settings with Redis reached directly, not through the test's proxy."""
    return settings.model_copy(update={"redis_url": LOCAL_REDIS_URL})


async def redis_proxy() -> TCPProxy:
    proxy = TCPProxy("127.0.0.1", 6379)
    await proxy.start()
    return proxy


def via(proxy: TCPProxy, settings: Settings) -> Settings:
    return settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"})


def blocking(loop: asyncio.AbstractEventLoop, action: Callable[[], Any]) -> None:
    """Run ``action`` (a coroutine function or a plain one) on the test's loop from the worker's thread."""

    async def run() -> None:
        result = action()
        if asyncio.iscoroutine(result):
            await result

    asyncio.run_coroutine_threadsafe(run(), loop).result(10)


async def dead_letter_queues(settings: Settings) -> dict[str, list[bytes]]:
    """The messages in dramatiq's ``.XQ`` queues of each provider's delivery queues, every lane (taken off them)."""
    assert settings.amqp_url is not None
    keys = Keys(settings.namespace)
    found: dict[str, list[bytes]] = {}
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for platform in PLATFORMS:
            bodies = found[platform] = []
            for name in keys.delivery_queues(platform):
                try:
                    queue = await channel.declare_queue(name + ".XQ", passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:  # dramatiq has not declared it yet: empty
                    channel = await connection.channel()
                    continue
                while (message := await queue.get(no_ack=True, fail=False)) is not None:
                    bodies.append(message.body)
    return found


async def until(predicate: Callable[[], Any], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.05)


@pytest.mark.real
async def test_batches_enqueued_while_redis_is_down_are_delivered_once_it_is_back() -> None:
    proxy = await redis_proxy()
    # Two dramatiq retries would be spent well within the outage before goalhorn handled it.
    settings = via(proxy, make_settings("real", delivery_max_attempts=2, retry_base_delay_s=0.1))
    provider = Recording()
    redis = make_redis(direct(settings))
    counters = PipelineCounters(redis, Keys(settings.namespace))
    try:
        async with delivery_stage(settings, provider) as (stage, _):
            await deliver_all(stage, redis, [batch("warm", 5).encode()])  # the worker's clients are connected
            await proxy.drop(refuse=True)
            batches = [batch(f"i{n}", 40) for n in range(12)]
            for one in batches:
                await stage.enqueue(one.encode())
            await counters.add({"batches_published": len(batches)})
            await asyncio.sleep(5.0)

            assert proxy.refused > 0, "the worker tried Redis during the outage"
            assert sum(provider.pushes.values()) == 5, "nothing is sent while Redis is away"
            assert not any((await dead_letter_queues(settings)).values()), "nothing went to dramatiq's .XQ"

            back = time.monotonic()
            proxy.accept()

            async def all_done() -> bool:
                snap = await counters.snapshot()
                return snap.get("batches_done") >= snap.get("batches_published")

            await until(all_done, 30)
            recovered_s = time.monotonic() - back
            snap = await counters.snapshot()
            xq = await dead_letter_queues(settings)
            dead = await redis.xrange(stage.keys.dead_letters())
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
        await proxy.aclose()

    expected = {(f"i{n}", f"d{i:03d}") for n in range(12) for i in range(40)}
    expected |= {("warm", f"d{i:03d}") for i in range(5)}
    assert set(provider.pushes) == expected, "every device of every batch got its push"
    assert set(provider.pushes.values()) == {1}, "and nobody got it twice"
    assert set(provider.attempts) == {1}, "the outage cost no delivery attempt"
    assert snap.get("retries") == 0
    assert snap.get("delivery:fcm:sent") == 12 * 40 + 5
    assert not any(xq.values()), "nothing in dramatiq's .XQ"
    assert dead == []
    print(f"all batches delivered {recovered_s:.2f} s after Redis came back")


@pytest.mark.real
@pytest.mark.parametrize(("lease_s", "outage_s"), [(4, 1.0), (2, 7.0)], ids=["within-a-lease", "three-leases"])
async def test_sent_marks_lost_to_a_redis_outage_mid_batch_are_written_when_it_is_back(
    lease_s: int, outage_s: float
) -> None:
    """Redis goes away while a batch is being sent: what the provider accepted must still be marked
    sent, or the claims run out and those devices are pushed again. An outage longer than a lease
    (the claims lapse, renewals cannot reach Redis) holds the batch until its marks land, rather than
    putting it back whole."""
    proxy = await redis_proxy()
    settings = via(proxy, make_settings("real", claim_lease_s=lease_s))
    loop = asyncio.get_running_loop()

    def cut_at_half(sent: int) -> None:
        if sent == 150:
            blocking(loop, lambda: proxy.drop(refuse=True))
            loop.call_soon_threadsafe(loop.call_later, outage_s, proxy.accept)

    provider = Recording(on_send=cut_at_half)
    redis = make_redis(direct(settings))
    try:
        async with delivery_stage(settings, provider) as (stage, _):
            snap = await deliver_all(stage, redis, [batch("mid", 300).encode()], 30)
            await asyncio.sleep(settings.claim_lease_s + 2.5)  # past the claims' lease: a lost mark shows now
            snap = await PipelineCounters(redis, stage.keys).snapshot()
            markers = await redis.mget([stage.keys.delivery_marker("mid", f"d{i:03d}") for i in range(300)])
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
        await proxy.aclose()

    assert proxy.refused > 0, "the outage happened"
    assert provider.pushes == {("mid", f"d{i:03d}"): 1 for i in range(300)}, "every device exactly once"
    assert markers == [b"sent"] * 300
    assert snap.get("delivery:fcm:sent") == 300
    assert snap.get("batches_done") == snap.get("batches_published")


async def test_a_batch_the_worker_keeps_failing_on_ends_in_the_dead_letters(backend: str) -> None:
    settings = make_settings(backend, delivery_max_attempts=3, retry_base_delay_s=0.05, retry_max_delay_s=0.2)
    providers = BrokenProviders()
    one = batch("bug", 1).encode()
    redis = make_redis(settings)
    try:
        async with broken_stage(settings, providers) as stage:
            snap = await deliver_all(stage, redis, [one], 20)
            dead: Any = await redis.xrange(stage.keys.dead_letters())
            left = (
                stage.broker.dead_letters
                if isinstance(stage.broker, StubBroker)
                else [m for ms in (await dead_letter_queues(settings)).values() for m in ms]
            )
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()

    assert providers.calls == 3, "tried once per attempt"
    assert left == [], "nothing left in dramatiq's dead letters"
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"kind"] == b"message"
    assert fields[b"code"] == b"worker_failed"
    assert fields[b"message"] == one.payload, "the batch as it was queued"
    reason = fields[b"reason"].decode()
    assert reason.startswith("worker failed 3 times: RuntimeError: cannot build the provider"), reason
    assert snap.get("failed_batches") == 1
    assert snap.get("batches_done") == 1


@pytest.mark.real
async def test_a_failed_batch_stays_in_the_xq_queue_when_redis_is_down_to_dead_letter_it() -> None:
    proxy = await redis_proxy()
    settings = via(proxy, make_settings("real", delivery_max_attempts=2, retry_base_delay_s=0.05))
    loop = asyncio.get_running_loop()

    def cut_on_the_last_try(calls: int) -> None:
        if calls == settings.delivery_max_attempts:
            blocking(loop, lambda: proxy.drop(refuse=True))

    providers = BrokenProviders(on_call=cut_on_the_last_try)
    one = batch("bug", 1).encode()
    redis = make_redis(direct(settings))
    found: list[bytes] = []
    try:
        async with broken_stage(settings, providers) as stage:
            await stage.enqueue(one)

            async def in_xq() -> bool:
                found.extend((await dead_letter_queues(settings))["fcm"])
                return bool(found)

            await until(in_xq, 20)
            proxy.accept()
            dead = await redis.xrange(stage.keys.dead_letters())
    finally:
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
        await proxy.aclose()

    assert providers.calls == 2
    assert dead == []
    (body,) = found
    assert json.loads(body)["args"] == [one.payload.decode()], "the batch is kept whole in .XQ"


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``goalhorn worker``, as a user runs it."""
    code = "import sys; from goalhorn.ops.cli import main; sys.argv = ['goalhorn', 'worker']; main()"
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.real
async def test_a_goalhorn_worker_cut_off_from_redis_delivers_everything_once_it_is_back(tmp_path: Path) -> None:
    """The same outage for a real ``goalhorn worker`` process, its FCM provider and the FCM sandbox."""
    proxy = await redis_proxy()
    settings = via(proxy, make_settings("real", delivery_max_attempts=2))
    keys = Keys(settings.namespace)
    redis = make_redis(direct(settings))
    counters = PipelineCounters(redis, keys)
    stage = DeliveryStage(  # publishes only
        direct(settings), make_broker(settings), BrokenProviders(), default_catalog().render
    )
    worker: subprocess.Popen[bytes] | None = None
    async with FcmSandbox() as fcm:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOALHORN_")}
        env |= {
            "GOALHORN_AMQP_URL": str(settings.amqp_url),
            "GOALHORN_REDIS_URL": str(settings.redis_url),
            "GOALHORN_NAMESPACE": settings.namespace,
            "GOALHORN_DELIVERY_MAX_ATTEMPTS": "2",
            "GOALHORN_FCM_CREDENTIALS_FILE": str(fcm.service_account(tmp_path / "sa.json")),
            "GOALHORN_FCM_BASE_URL": fcm.url,
            "GOALHORN_WORKER_THREADS": "2",
        }

        async def all_done() -> bool:
            snap = await counters.snapshot()
            return snap.get("batches_done") >= snap.get("batches_published") > 0

        try:
            worker = start_worker(env, tmp_path / "worker.log")
            await stage.enqueue(batch("warm", 5).encode())
            await counters.add({"batches_published": 1})
            await until(all_done, 45)  # the worker runs and its clients are connected
            await proxy.drop(refuse=True)
            batches = [batch(f"p{n}", 50) for n in range(8)]
            for one in batches:
                await stage.enqueue(one.encode())
            await counters.add({"batches_published": len(batches)})
            await asyncio.sleep(5.0)
            assert proxy.refused > 0
            assert sum(fcm.received.values()) == 5, "nothing is sent while Redis is away"
            proxy.accept()
            await until(all_done, 30)
            snap = await counters.snapshot()
            xq = await dead_letter_queues(settings)
        finally:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                await asyncio.to_thread(worker.wait, 30)
            stage.close()
            stage.broker.close()
            await delete_namespace(redis, settings.namespace)
            await redis.aclose()
            await proxy.aclose()
            await delete_delivery_queues(settings)

    assert fcm.received == {f"tok-{i}": 8 + (i < 5) for i in range(50)}, "every push once (tokens repeat per batch)"
    assert snap.get("delivery:fcm:sent") == 8 * 50 + 5
    assert snap.get("retries") == 0
    assert not any(xq.values())
    log = (tmp_path / "worker.log").read_text()
    assert "Redis unavailable" in log, "the worker said why it waited"
