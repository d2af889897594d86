"""Priority lanes (issue 13): a critical batch is delivered while normal batches hold every normal
worker thread, and a goal queued behind a backlog of 500-device batches goes out long before the
backlog is through, with `goalhorn run deliver` against `goalhorn sandbox`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from queue import Empty

import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.worker import _WorkQueueItem

from goalhorn.catalog import default_catalog
from goalhorn.counters import PipelineCounters
from goalhorn.dispatch.lanes import ACTOR_PRIORITY, AfterCritical, CriticalFirst, LaneWorkQueue
from goalhorn.dispatch.stage import DeliveryStage, DeliveryWorker, delivery_message, make_broker
from goalhorn.keys import PLATFORMS, Keys, Platform
from goalhorn.models import DeliveryBatch, Device
from goalhorn.providers.console import ConsoleProvider
from goalhorn.providers.fcm import FcmProvider
from goalhorn.redis_client import make_redis
from goalhorn.sandbox.faults import FaultWindow
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.settings import Settings
from tests.conftest import delete_namespace, make_settings
from tests.processes import Process, exports, free_port, processes, read_records, real_env
from tests.queues import delete_delivery_queues
from tests.support.builders import make_intent


def item(lane: str, name: str) -> _WorkQueueItem:
    return _WorkQueueItem(ACTOR_PRIORITY["critical" if lane == "critical" else "normal"], name)  # type: ignore[arg-type]


def test_reserved_threads_take_only_critical_items_and_the_others_take_critical_first() -> None:
    queue = LaneWorkQueue()
    queue.put(item("normal", "n1"))
    with pytest.raises(Empty):
        queue.get_critical(0.05)
    queue.put(item("critical", "c1"))
    queue.put(item("critical", "c2"))
    assert queue.get_critical(1).message == "c1"
    assert queue.get(timeout=1).message == "c2", "a shared thread takes a critical item before an older normal one"
    assert queue.get(timeout=1).message == "n1"


def test_a_normal_item_wakes_a_shared_thread_even_when_a_reserved_thread_waits_too() -> None:
    queue = LaneWorkQueue()
    got: dict[str, str] = {}

    def take(kind: str) -> None:
        try:
            taken = queue.get_critical(60) if kind == "reserved" else queue.get(timeout=60)
        except Empty:
            got[kind] = "nothing"
        else:
            got[kind] = str(taken.message)

    reserved, shared = (threading.Thread(target=take, args=(kind,)) for kind in ("reserved", "shared"))
    reserved.start()
    shared.start()
    time.sleep(0.2)  # both wait
    queue.put(item("normal", "n1"))  # a put wakes one waiter: were it the reserved one alone, n1 would sit there
    shared.join(10)
    assert got == {"shared": "n1"}
    queue.put(item("critical", "c1"))
    reserved.join(10)
    assert got == {"shared": "n1", "reserved": "c1"}


async def turn_taken(gate: CriticalFirst, sent: list[int], n: int, release: asyncio.Event) -> None:
    """A normal send through ``gate``: noted in ``sent`` when it goes, in flight until ``release``."""
    async with gate.turn():
        sent.append(n)
        await release.wait()


async def test_normal_sends_wait_while_a_critical_batch_is_in_hand_but_not_for_ever() -> None:
    gate = CriticalFirst(hold_max_s=60, settle_s=0)
    done = asyncio.Event()
    done.set()
    sent: list[int] = []
    await asyncio.wait_for(turn_taken(gate, sent, 0, done), 5)  # nothing critical: no wait
    async with gate.critical():
        waiting = asyncio.create_task(turn_taken(gate, sent, 1, done))
        await asyncio.sleep(0.1)
        assert sent == [0], "a normal send waits while the critical batch is delivered"
    await asyncio.wait_for(waiting, 5)
    assert sent == [0, 1]
    bounded = CriticalFirst(hold_max_s=0.05, settle_s=0)
    async with bounded.critical():
        await asyncio.wait_for(
            turn_taken(bounded, sent, 2, done), 5
        )  # a steady critical flow does not stop the normal lane


async def test_under_a_steady_critical_flow_the_normal_lane_goes_a_trickle_at_a_time() -> None:
    gate = CriticalFirst(hold_max_s=0.05, trickle=2, settle_s=0)
    release = asyncio.Event()
    sent: list[int] = []
    async with gate.critical():
        sends = [asyncio.create_task(turn_taken(gate, sent, n, release)) for n in range(10)]
        await asyncio.sleep(0.5)  # every send waited its hold_max_s
        assert len(sent) == 2, "past the hold, only the trickle goes: not the whole lane at once"
        assert gate.trickling == 2
        release.set()  # the trickle's sends finish: two more go, and so on
        async with asyncio.timeout(5):
            while len(sent) < 10:
                await asyncio.sleep(0.01)
        release.clear()
        late = asyncio.create_task(turn_taken(gate, sent, 10, release))
        await asyncio.sleep(0.01)
        assert len(sent) == 10, "a send that came later waits its own hold"
    await asyncio.wait_for(asyncio.sleep(0.01), 1)
    assert sent[-1] == 10, "once no critical batch is in hand, the lane goes at once"
    release.set()
    await asyncio.wait_for(asyncio.gather(*sends, late), 5)
    assert gate.trickling == 0


async def test_the_normal_lane_stays_held_a_moment_after_the_last_critical_batch() -> None:
    gate = CriticalFirst(hold_max_s=60, settle_s=0.3)
    done = asyncio.Event()
    done.set()
    sent: list[int] = []
    async with gate.critical():
        first = asyncio.create_task(turn_taken(gate, sent, 1, done))
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    assert sent == [], "the goal is delivered, but the next one may be seconds away: the lane stays held"
    async with gate.critical():  # the next goal within the settle time: the hold goes on
        await asyncio.sleep(0.25)
    await asyncio.sleep(0.2)
    assert sent == [], "a critical batch within the settle time starts it again"
    await asyncio.wait_for(first, 2)
    assert sent == [1]
    assert not gate.held
    await asyncio.wait_for(turn_taken(gate, sent, 2, done), 0.05)  # once settled, no wait at all


async def test_a_normal_send_past_its_hold_trickles_during_the_settle_time_too() -> None:
    gate = CriticalFirst(hold_max_s=0.05, trickle=1, settle_s=5)
    release = asyncio.Event()
    sent: list[int] = []
    async with gate.critical():
        await asyncio.sleep(0)  # a critical batch delivered at once: the settle time starts
    sends = [asyncio.create_task(turn_taken(gate, sent, n, release)) for n in range(3)]
    await asyncio.sleep(0.3)
    assert sent == [0], "held after the critical batch, a send past its hold_max_s goes as the trickle"
    release.set()
    await asyncio.wait_for(asyncio.gather(*sends), 5)
    assert sent == [0, 1, 2]


def test_the_normal_lane_keeps_at_most_its_own_concurrency_in_flight() -> None:
    inner = ConsoleProvider("fcm")
    inner.concurrency = 100
    assert AfterCritical(inner, CriticalFirst(), concurrency=25).concurrency == 25
    assert AfterCritical(inner, CriticalFirst(), concurrency=0).concurrency == 100, "0: the provider's own"
    assert AfterCritical(inner, CriticalFirst(), concurrency=500).concurrency == 100, "never more than it"


def batch(
    tag: str,
    platform: Platform,
    priority: int,
    n: int,
    *,
    hooks: str = "https://hooks.example/hooks",
    secret: str = "whsec_aGk=",
) -> DeliveryBatch:
    """A batch of ``n`` devices whose addresses start with ``tag``, of an intent at ``priority``."""

    def address(i: int) -> str:
        if platform == "apns":
            return f"{tag.encode().hex()}{i:08x}".rjust(64, "0")
        if platform == "webhook":
            return f"{hooks}/{tag}-{i}"
        return f"{tag}-{i}-" + "Ab9_-:" * 24

    devices = tuple(
        Device(
            device_id=f"{tag}-{platform}-{i}",
            user_id=f"u-{tag}-{i}",
            platform=platform,
            address=address(i),
            **({"secret": secret} if platform == "webhook" else {}),
        )
        for i in range(n)
    )
    intent = make_intent(f"i-{tag}", ttl_s=3600).model_copy(update={"priority": priority})
    return DeliveryBatch(batch_id=f"b-{tag}-{platform}", platform=platform, intent=intent, devices=devices)


async def test_batches_go_to_their_lane_by_priority() -> None:
    settings = make_settings("embedded", critical_priority=8)
    keys = Keys(settings.namespace)
    stage = DeliveryStage(settings, make_broker(settings), lambda p, r: ConsoleProvider(p), default_catalog().render)
    try:
        cases: list[tuple[int, Platform]] = [(9, "fcm"), (8, "apns"), (7, "webhook"), (2, "fcm")]
        for priority, platform in cases:
            await stage.enqueue(batch(f"p{priority}", platform, priority, 1).encode())
        assert isinstance(stage.broker, StubBroker)
        depth = {name: queue.qsize() for name, queue in stage.broker.queues.items()}
        assert depth[keys.delivery_queue("fcm", "critical")] == 1
        assert depth[keys.delivery_queue("apns", "critical")] == 1
        assert depth[keys.delivery_queue("webhook")] == 1
        assert depth[keys.delivery_queue("fcm")] == 1
        assert sum(depth.values()) == 4
        replayed = delivery_message(keys, batch("r", "apns", 9, 1).encode(), settings.critical_priority)
        assert (replayed.queue_name, replayed.actor_name) == (
            keys.delivery_queue("apns", "critical"),
            keys.delivery_actor("apns", "critical"),
        )
        assert delivery_message(keys, batch("r", "apns", 9, 1).encode(), 10).queue_name == keys.delivery_queue("apns")
    finally:
        stage.close()
        stage.broker.close()


@pytest.mark.timeout(90)
async def test_a_critical_batch_goes_out_while_normal_batches_hold_every_normal_thread(backend: str, tmp_path) -> None:
    async with FcmSandbox() as fcm:
        fcm.service_account(tmp_path / "sa.json")
        settings = make_settings(
            backend,
            fcm_credentials_file=str(tmp_path / "sa.json"),
            fcm_base_url=fcm.url,
            worker_threads=2,
            critical_worker_threads=1,
        )
        # Each lane gets a provider of its own, as `goalhorn run deliver` does.
        stage = DeliveryStage(
            settings, make_broker(settings), lambda p, r: FcmProvider(settings), default_catalog().render
        )
        redis = make_redis(settings)
        counters = PipelineCounters(redis, stage.keys)
        worker = DeliveryWorker(stage)
        worker.start()
        try:
            warm = batch("warm", "fcm", 2, 1)  # a circuit that has answered lets more than one request out
            await stage.enqueue(warm.encode())
            async with asyncio.timeout(30):
                while not fcm.received:
                    await asyncio.sleep(0.02)
            fcm.faults.open(FaultWindow("hang", until=time.monotonic() + 8, prefix="bulk"))
            backlog = [batch(f"bulk{n}", "fcm", 2, 5) for n in range(4)]
            for b in backlog:
                await stage.enqueue(b.encode())
            async with asyncio.timeout(30):
                while fcm.faults.hanging < 2:  # both normal threads hold a batch the sandbox holds a send of
                    await asyncio.sleep(0.02)
            goal = batch("goal", "fcm", 9, 5)
            await stage.enqueue(goal.encode())
            await counters.add({"batches_published": len(backlog) + 2})
            wanted = {d.address for d in goal.devices}
            async with asyncio.timeout(30):
                while not wanted <= set(fcm.received):
                    await asyncio.sleep(0.02)
            assert fcm.faults.hanging >= 2, "the goal went out while the normal batches were still held"
            assert set(fcm.received) == wanted | {warm.devices[0].address}, "and before any of them"
            async with asyncio.timeout(45):
                while (snap := await counters.snapshot()).get("batches_done") < snap.get("batches_published"):
                    await asyncio.sleep(0.1)
        finally:
            await asyncio.to_thread(worker.stop, 30)
            stage.close()
            stage.broker.close()
            await delete_namespace(redis, settings.namespace)
            await redis.aclose()
            if settings.amqp_url:
                await delete_delivery_queues(settings)
    assert snap.get("delivery:fcm:sent") == 26
    assert Counter(fcm.received.values()) == Counter({1: 26}), "every device once"


BACKLOG_BATCHES = 40
"""Of 500 devices at priority 2: more than a worker prefetches, all of them held before the goals came."""
GOALS = 3


@pytest.mark.real
@pytest.mark.timeout(300)
async def test_goals_queued_behind_a_backlog_go_out_before_it_drains(tmp_path: Path) -> None:
    record = tmp_path / "pushes.jsonl"
    env = real_env()
    settings = Settings(
        amqp_url=env["GOALHORN_AMQP_URL"], redis_url=env["GOALHORN_REDIS_URL"], namespace=env["GOALHORN_NAMESPACE"]
    )
    # This process only enqueues, as fanout would: `goalhorn run deliver` delivers.
    stage = DeliveryStage(settings, make_broker(settings), lambda p, r: ConsoleProvider(p), default_catalog().render)
    redis = make_redis(settings)
    counters = PipelineCounters(redis, stage.keys)
    with processes(tmp_path) as running:
        ports = ["--fcm-port", str(free_port()), "--apns-port", str(free_port()), "--webhook-port", str(free_port())]
        sandbox = Process(
            "sandbox", ["sandbox", "--dir", str(tmp_path / "sb"), "--record", str(record), *ports], env, tmp_path
        )
        running["sandbox"] = sandbox.start()
        hooks = sandbox.wait_for(r"^webhooks (\S+)/<endpoint>").group(1)
        secret = sandbox.wait_for(r"^webhook secret (\S+)").group(1)
        sandbox.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
        env.update(exports(sandbox.lines))
        try:
            backlog = [
                batch(f"bulk{n}", PLATFORMS[n % 3], 2, 500, hooks=hooks, secret=secret) for n in range(BACKLOG_BATCHES)
            ]
            for b in backlog:
                await stage.enqueue(b.encode())
            worker = Process("deliver", ["run", "deliver"], env, tmp_path)
            running["deliver"] = worker.start()
            worker.wait_for(r"running \(namespace")
            async with asyncio.timeout(60):
                while len(read_records(record)) < 500:  # it is through the backlog's first batches
                    await asyncio.sleep(0.05)
            goals = [
                batch(f"goal{g}", platform, 9, 100, hooks=hooks, secret=secret)
                for g in range(GOALS)
                for platform in PLATFORMS
            ]
            for b in goals:
                await stage.enqueue(b.encode())
            await counters.add({"batches_published": len(backlog) + len(goals)})
            wanted = {d.address for b in goals for d in b.devices}
            async with asyncio.timeout(120):
                while True:
                    records = read_records(record)
                    got = {r.get("token") or r["url"] for r in records}
                    if wanted <= got:
                        break
                    await asyncio.sleep(0.05)
            backlog_then = len(records) - len(wanted)
            async with asyncio.timeout(180):
                while (snap := await counters.snapshot()).get("batches_done") < snap.get("batches_published"):
                    await asyncio.sleep(0.2)
        finally:
            stage.close()
            stage.broker.close()
            await redis.aclose()

    total = BACKLOG_BATCHES * 500
    assert backlog_then < total / 2, f"every goal push was out after {backlog_then:,} of {total:,} backlog pushes"
    pushes = Counter(r.get("token") or r["url"] for r in read_records(record))
    assert len(pushes) == total + len(wanted), "everyone, backlog included"
    assert set(pushes.values()) == {1}, "once"
