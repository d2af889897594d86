"""A delivery worker process killed with kill -9 mid-batch: after a restart every device has exactly one push.

Real RabbitMQ and Redis, a real ``goalhorn worker`` process, the real FCM provider and the sandbox.
The sandbox accepts 150 of 400 messages and then holds the rest unanswered; once the worker has
marked those 150 sent, it is killed. What it leaves claimed is what it had in flight (all 250 with
500 in flight; with 20 in flight, those and at most the rest of their claim window). The unacked
batch comes back to the restarted worker, which skips the 150 (sent markers), sends the devices
nobody claimed at once and the dead worker's once their claims expire.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from goalhorn.catalog import default_catalog
from goalhorn.counters import PipelineCounters
from goalhorn.dispatch.stage import DeliveryStage, make_broker
from goalhorn.keys import Keys
from goalhorn.models import DeliveryBatch, Device
from goalhorn.providers.console import ConsoleProvider
from goalhorn.redis_client import make_redis
from goalhorn.sandbox.fcm_server import FcmSandbox
from tests.conftest import delete_namespace, make_settings
from tests.queues import delete_delivery_queues
from tests.support.builders import make_intent

pytestmark = pytest.mark.real


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    code = "import sys; from goalhorn.ops.cli import main; sys.argv = ['goalhorn', 'worker']; main()"
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)


async def until(predicate, timeout_s: float = 45.0, what: str = "") -> None:
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("in_flight", [250, 20])
async def test_worker_killed_mid_batch_delivers_every_device_exactly_once(tmp_path: Path, in_flight: int) -> None:
    settings = make_settings("real", claim_lease_s=2)
    keys = Keys(settings.namespace)
    redis = make_redis(settings)
    stage = DeliveryStage(
        settings, make_broker(settings), lambda p, render: ConsoleProvider(p), default_catalog().render
    )  # publishes only
    workers: list[subprocess.Popen[bytes]] = []
    async with FcmSandbox() as fcm:
        credentials = fcm.service_account(tmp_path / "sa.json")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOALHORN_")}
        env |= {
            "GOALHORN_AMQP_URL": str(settings.amqp_url),
            "GOALHORN_REDIS_URL": str(settings.redis_url),
            "GOALHORN_NAMESPACE": settings.namespace,
            "GOALHORN_CLAIM_LEASE_S": "2",
            "GOALHORN_FCM_CREDENTIALS_FILE": str(credentials),
            "GOALHORN_FCM_BASE_URL": fcm.url,
            "GOALHORN_WORKER_THREADS": "2",
            "GOALHORN_FCM_CONCURRENCY": "500" if in_flight == 250 else str(in_flight),
        }
        devices = tuple(
            Device(device_id=f"d{i:03d}", user_id=f"u{i}", platform="fcm", address=f"tok-{i}") for i in range(400)
        )
        batch = DeliveryBatch(batch_id="b-kill", platform="fcm", intent=make_intent("i-kill", 600), devices=devices)
        counters = PipelineCounters(redis, keys)

        async def markers(value: bytes) -> int:
            names = [keys.delivery_marker("i-kill", d.device_id) for d in devices]
            return sum(1 for found in await redis.mget(names) if found == value)

        async def sent_markers() -> int:
            return await markers(b"sent")

        try:
            fcm.stall_after(150)
            await stage.enqueue(batch.encode())
            await counters.add({"batches_published": 1})
            workers.append(start_worker(env, tmp_path / "worker.log"))

            async def first_part_marked() -> bool:
                return fcm.delivered == 150 and fcm.stalled == in_flight and await sent_markers() == 150

            await until(first_part_marked)
            workers[0].send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(workers[0].wait, 10) == -signal.SIGKILL
            held = await markers(b"inflight")
            assert in_flight <= held <= 2 * in_flight, "claimed: what was in flight, and the rest of its window"

            async def connections_dropped() -> bool:
                return fcm.stalled == 0

            await until(connections_dropped, 10)
            fcm.stall_after(None)
            workers.append(start_worker(env, tmp_path / "worker.log"))

            async def all_done() -> bool:
                snap = await counters.snapshot()
                return snap.get("delivery:fcm:sent") == 250 and snap.get("batches_done") >= snap.get(
                    "batches_published"
                )

            await until(all_done)
            snap = await counters.snapshot()
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                    await asyncio.to_thread(worker.wait, 20)
            stage.close()
            stage.broker.close()
            await delete_namespace(redis, settings.namespace)
            await redis.aclose()
            await delete_delivery_queues(settings)

    assert fcm.received == {f"tok-{i}": 1 for i in range(400)}, "every device got exactly one push"
    assert snap.get("duplicates_skipped") == 150, "the redelivered batch skipped what the dead worker had sent"
    # The dead worker's claims were sent once its 2 s leases ran out: waited out as held when the new
    # worker started within the lease, claimed afresh (0) when a loaded machine made it start later.
    assert snap.get("held_requeued") in (0, held)
