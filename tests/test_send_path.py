"""The Deliverer's send path, batch by batch against the sandbox servers and small aiohttp receivers:
breakers per request, claim windows, per-endpoint caps, counters as a ledger, superseded intents, and
provider crashes that spend attempts."""

from __future__ import annotations

import asyncio
import gc
import io
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from goalhorn.counters import CounterSnapshot
from goalhorn.dispatch.breaker import BUSY, CircuitBreaker, State
from goalhorn.dispatch.delivery import Deliverer
from goalhorn.keys import Keys, Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device, EncodedBatch, Intent
from goalhorn.providers import Provider
from goalhorn.providers.apns import ApnsProvider
from goalhorn.providers.console import ConsoleProvider
from goalhorn.providers.fcm import FcmProvider
from goalhorn.providers.webhook import WebhookProvider
from goalhorn.redis_client import Redis, make_redis
from goalhorn.sandbox.apns_server import ApnsSandbox
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.settings import Settings
from tests.conftest import delete_namespace, make_settings
from tests.httpserver import serve
from tests.support.builders import make_intent

SECRET = "whsec_aGVsbG8gd29ybGQ="


def phones(n: int, prefix: str = "d") -> tuple[Device, ...]:
    return tuple(
        Device(device_id=f"{prefix}{i:03d}", user_id=f"u{i}", platform="fcm", address=f"tok-{prefix}{i}")
        for i in range(n)
    )


def batch_of(devices: tuple[Device, ...], intent: Intent | None = None, attempt: int = 1) -> DeliveryBatch:
    platform = devices[0].platform
    return DeliveryBatch(
        batch_id="b-1", platform=platform, intent=intent or make_intent(), devices=devices, attempt=attempt
    )


@dataclass
class Harness:
    """A Deliverer on its own: what it would enqueue again is kept in ``requeued`` (batch, delay)."""

    settings: Settings
    redis: Redis
    deliverer: Deliverer
    requeued: list[tuple[DeliveryBatch, float]] = field(default_factory=list)

    async def snapshot(self) -> CounterSnapshot:
        return await self.deliverer.counters.snapshot()

    async def markers(self, intent_id: str, devices: tuple[Device, ...]) -> Counter[bytes | str | None]:
        keys = Keys(self.settings.namespace)
        return Counter(await self.redis.mget([keys.delivery_marker(intent_id, d.device_id) for d in devices]))


@asynccontextmanager
async def harness(settings: Settings, provider: Provider) -> AsyncIterator[Harness]:
    redis = make_redis(settings)
    requeued: list[tuple[DeliveryBatch, float]] = []

    async def enqueue(batch: EncodedBatch, delay_s: float) -> None:
        requeued.append((batch.decode(), delay_s))

    deliverer = Deliverer(settings, redis, {provider.platform: provider}, enqueue)
    try:
        yield Harness(settings, redis, deliverer, requeued)
    finally:
        await deliverer.aclose()
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[FcmSandbox]:
    async with FcmSandbox() as server:
        server.service_account(tmp_path / "sa.json")
        yield server


def fcm_settings(fcm: FcmSandbox, tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(
        "real", fcm_credentials_file=str(tmp_path / "sa.json"), fcm_base_url=fcm.url, fcm_rate_per_s=0, **overrides
    )


# --- breakers per request --------------------------------------------------------------------------


def test_a_circuit_not_proven_healthy_lets_out_only_what_could_fail_before_it_opens() -> None:
    breaker = CircuitBreaker(threshold=3, open_s=10, clock=lambda: 0.0)
    assert [breaker.admit() for _ in range(4)] == [0, 0, 0, BUSY], "three in flight could open it"
    breaker.record(ok=False)
    assert breaker.admit() == BUSY, "one failed and two are in flight: the third may not go yet"
    breaker.record(ok=True)
    assert [breaker.admit() for _ in range(10)] == [0] * 10, "a success: no ramp any more"
    for _ in range(3):
        breaker.record(ok=False)
    assert breaker.state is State.OPEN
    assert breaker.admit() == 10


def test_a_healthy_circuit_that_starts_failing_ramps_again_instead_of_sending_everything_in_hand() -> None:
    breaker = CircuitBreaker(threshold=3, open_s=10, clock=lambda: 0.0)
    breaker.admit()
    breaker.record(ok=True)
    assert [breaker.admit() for _ in range(5)] == [0] * 5, "proven: five in flight"
    breaker.record(ok=False)
    assert breaker.admit() == BUSY, "a failure with four still in flight: nothing more until they answer"
    for _ in range(3):
        breaker.record(ok=True)
    assert breaker.admit() == 0, "a success proves it healthy again"


async def test_a_provider_answering_503_gets_threshold_requests_then_one_probe_per_open_period(
    fcm: FcmSandbox, tmp_path: Path
) -> None:
    threshold = 20
    settings = fcm_settings(fcm, tmp_path, breaker_failure_threshold=threshold, breaker_open_s=0.4)
    fcm.unavailable_for(60)
    async with harness(settings, FcmProvider(settings)) as h:
        batch = batch_of(phones(500))
        await h.deliverer.process(batch)
        assert fcm.requests == threshold, "only what could fail before the circuit opened reached FCM"
        requeued = {batch.attempt: (batch, wait) for batch, wait in h.requeued}
        assert len(requeued[2][0].devices) == threshold, "the failed ones try again"
        deferred, wait = requeued[1]
        assert len(deferred.devices) == 500 - threshold, "the others wait for the circuit, no attempt spent"
        assert wait >= 0.3, "past the open time"
        assert await h.markers("i-1", batch.devices) == {None: 500}, "no claim kept"
        # They come back while FCM is still down: each open period lets one probe out.
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.5
        while loop.time() < until:
            await asyncio.sleep(0.45)
            again, h.requeued[:] = list(h.requeued), []
            for batch_again, _ in again:
                await h.deliverer.process(batch_again)
        breaker = h.deliverer.breakers[f"fcm:{fcm.project_id}"]
        probes = breaker.opened_count - 1
        assert 1 <= probes <= 4
        assert fcm.requests == threshold + probes


# --- claim windows ---------------------------------------------------------------------------------


async def test_a_worker_holds_claims_only_for_about_what_it_has_in_flight(fcm: FcmSandbox, tmp_path: Path) -> None:
    settings = fcm_settings(fcm, tmp_path, fcm_concurrency=20)
    devices = phones(400)
    fcm.stall_after(150)
    async with harness(settings, FcmProvider(settings)) as h:
        task = asyncio.create_task(h.deliverer.process(batch_of(devices)))
        try:
            async with asyncio.timeout(20):
                while not (fcm.delivered == 150 and fcm.stalled == 20):
                    await asyncio.sleep(0.02)
                markers = await h.markers("i-1", devices)
                while markers[b"sent"] < 150:
                    await asyncio.sleep(0.02)
                    markers = await h.markers("i-1", devices)
            # What a kill now would leave claimed: what is in flight and the rest of its window, not the batch.
            assert 20 <= markers[b"inflight"] <= 2 * 20
            assert markers[None] >= 400 - 150 - 2 * 20
        finally:
            task.cancel()
            fcm.stall_after(None)
            await asyncio.gather(task, return_exceptions=True)


# --- per-endpoint caps -----------------------------------------------------------------------------


@dataclass
class Receivers:
    """A hanging endpoint and healthy ones, with what each saw and when."""

    hang_arrived: int = 0
    healthy: list[tuple[str, int]] = field(default_factory=list)
    """(path, requests to hanging endpoints arrived so far) at each healthy arrival."""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hang", self._hang)
        app.router.add_post("/hang/{n}", self._hang)
        app.router.add_post("/ok/{n}", self._ok)
        return app

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        self.hang_arrived += 1
        await self.release.wait()
        return web.Response(status=204)

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        self.healthy.append((request.path, self.hang_arrived))
        return web.Response(status=204)


async def test_a_hanging_webhook_endpoint_holds_its_own_cap_not_the_shared_slots() -> None:
    receivers = Receivers()
    async with serve(receivers.app()) as base:
        settings = make_settings(
            "real",
            webhook_allowlist="127.0.0.1",
            webhook_concurrency=6,
            webhook_endpoint_concurrency=2,
            webhook_timeout_s=1.0,
            breaker_failure_threshold=4,
            breaker_open_s=30,
        )

        def hook(device_id: str, url: str) -> Device:
            return Device(device_id=device_id, user_id=device_id, platform="webhook", address=url, secret=SECRET)

        hanging = tuple(hook(f"h{i:02d}", f"{base}/hang") for i in range(30))
        healthy = tuple(hook(f"k{i:02d}", f"{base}/ok/{i}") for i in range(30))
        try:
            async with harness(settings, WebhookProvider(settings)) as h:
                await h.deliverer.process(batch_of(hanging + healthy))
                snap = await h.snapshot()
                breaker = h.deliverer.breakers[f"webhook:{base}/hang"]
        finally:
            receivers.release.set()

    assert len(receivers.healthy) == 30, "every healthy endpoint got its webhook"
    assert snap.get("delivery:webhook:sent") == 30
    # They all went out while the hanging endpoint had one request in flight (a new endpoint's cap is
    # one until it has answered), before it timed out.
    assert {arrived for _, arrived in receivers.healthy} == {1}
    assert breaker.state is State.OPEN, "the timeouts opened the endpoint's own circuit"
    assert receivers.hang_arrived == 4, "requests to it stopped at the threshold"
    assert snap.get("breaker_deferred") == 30 - 4
    assert snap.get("retries") == 4


async def test_endpoints_that_keep_timing_out_share_a_quarter_of_the_slots() -> None:
    receivers = Receivers()
    async with serve(receivers.app()) as base:
        settings = make_settings(
            "real",
            webhook_allowlist="127.0.0.1",
            webhook_concurrency=8,  # suspect endpoints: 2 of them
            webhook_endpoint_concurrency=2,
            webhook_timeout_s=0.5,
            breaker_failure_threshold=3,
            breaker_open_s=30,
        )

        def hook(device_id: str, url: str) -> Device:
            return Device(device_id=device_id, user_id=device_id, platform="webhook", address=url, secret=SECRET)

        try:
            async with harness(settings, WebhookProvider(settings)) as h:
                # Four endpoints that hang each time out once: suspects, not open yet.
                await h.deliverer.process(batch_of(tuple(hook(f"a{n}", f"{base}/hang/{n}") for n in range(4))))
                assert receivers.hang_arrived == 4
                hanging = tuple(hook(f"h{n}{i}", f"{base}/hang/{n}") for n in range(4) for i in range(5))
                healthy = tuple(hook(f"k{i:02d}", f"{base}/ok/{i}") for i in range(20))
                await h.deliverer.process(batch_of(hanging + healthy, make_intent("i-2")))
                snap = await h.snapshot()
        finally:
            receivers.release.set()

    # The healthy ones went while the four suspects had 2 requests out between them; without the pool
    # their caps (4 x 2) would have taken all 8 slots until they timed out.
    assert len(receivers.healthy) == 20
    assert {arrived - 4 for _, arrived in receivers.healthy} == {2}
    assert snap.get("delivery:webhook:sent") == 20
    assert receivers.hang_arrived == 4 + 4 * 2, "each opened at its third timeout"


async def test_an_ssrf_refusal_teaches_the_breaker_nothing_and_a_4xx_is_the_endpoint_working() -> None:
    async with serve(_answering(410, 400)) as base:
        settings = make_settings("real", webhook_allowlist="127.0.0.1", breaker_failure_threshold=2)
        refused = Device(device_id="r", user_id="r", platform="webhook", address="http://10.1.2.3/hook", secret=SECRET)
        bad_request = Device(device_id="b", user_id="b", platform="webhook", address=f"{base}/400", secret=SECRET)
        async with harness(settings, WebhookProvider(settings)) as h:
            await h.deliverer.process(batch_of((refused, bad_request)))
            snap = await h.snapshot()
            ssrf = h.deliverer.breakers["webhook:http://10.1.2.3/hook"]
            answered = h.deliverer.breakers[f"webhook:{base}/400"]
    assert snap.get("delivery:webhook:failed") == 2
    assert (ssrf.failures, ssrf.proven, ssrf.in_flight) == (0, False, 0), "nothing was learnt about it"
    assert (answered.failures, answered.proven) == (0, True), "a 4xx is an endpoint answering"


def _answering(*statuses: int) -> web.Application:
    app = web.Application()
    for status in statuses:

        async def handler(request: web.Request, status: int = status) -> web.StreamResponse:
            return web.Response(status=status)

        app.router.add_post(f"/{status}", handler)
    return app


# --- counters as a ledger --------------------------------------------------------------------------


async def test_a_redelivered_batch_leaves_the_delivery_counts_exact(fcm: FcmSandbox, tmp_path: Path) -> None:
    settings = fcm_settings(fcm, tmp_path)
    devices = phones(30)
    fcm.unregistered.update(d.address for d in devices[:10])
    async with harness(settings, FcmProvider(settings)) as h:
        batch = batch_of(devices)
        await h.deliverer.process(batch)
        await h.deliverer.process(batch)  # the same message again, e.g. after a worker died before its ack
        snap = await h.snapshot()
        expired = batch_of(phones(5, "x"), make_intent("i-old", ttl_s=0.05))
        await asyncio.sleep(0.1)
        await h.deliverer.process(expired)
        await h.deliverer.process(expired)
        late = await h.snapshot()
        trace = await h.deliverer.traces.read("i-1")

    assert fcm.requests == 30, "nothing went out twice"
    assert snap.get("delivery:fcm:sent") == 20
    assert snap.get("delivery:fcm:invalid_token") == 10, "a dead token is counted once"
    assert snap.get("duplicates_skipped") == 30
    assert snap.get("batches_done") == 2, "message handling: both deliveries of the message"
    assert late.get("delivery:fcm:expired") == 5
    assert (trace["fcm:sent"], trace["fcm:invalid_token"]) == ("20", "10")


# --- superseded intents ----------------------------------------------------------------------------


def scored(intent_id: str, minute: int, collapse_key: str | None = "g1:score") -> Intent:
    intent = make_intent(intent_id)
    at = intent.created_at - timedelta(minutes=90 - minute)
    return intent.model_copy(update={"collapse_key": collapse_key, "event_at": at})


async def test_an_older_intent_with_the_same_collapse_key_is_superseded_not_sent(backend: str) -> None:
    settings = make_settings(backend)
    fans = phones(6)
    out = io.StringIO()
    async with harness(settings, ConsoleProvider("fcm", out)) as h:
        await h.deliverer.process(batch_of(fans[:4], scored("two-one", 60)))
        await h.deliverer.process(batch_of(fans, scored("one-nil", 10)))  # the backlog's stale one
        await h.deliverer.process(batch_of(fans, scored("two-one", 60)))  # a redelivery of the newer one
        await h.deliverer.process(batch_of(fans, scored("other-game", 5, "g2:score")))
        snap = await h.snapshot()
        trace = await h.deliverer.traces.read("one-nil")

    sent = Counter((line.split()[2], line.split()[1]) for line in out.getvalue().splitlines())
    assert set(sent.values()) == {1}
    assert {d for i, d in sent if i == "one-nil"} == {"d004", "d005"}, "only fans the 2-1 had not reached"
    assert {d for i, d in sent if i == "two-one"} == {f"d{i:03d}" for i in range(6)}, (
        "the newer intent still reaches the fans the older one got first"
    )
    assert len([1 for i, _ in sent if i == "other-game"]) == 6, "another collapse key is not affected"
    assert snap.get("delivery:fcm:superseded") == 4
    assert trace["fcm:superseded"] == "4"


async def test_a_delivered_batch_is_freed_at_once_not_left_to_a_garbage_collection(backend: str) -> None:
    """A batch's staffing, stopped while it waited for a shared slot, once kept its cancellation with a
    traceback holding the batch in a reference cycle: every batch (500 decoded devices) stayed in memory
    until a full collection. Delivered batches must not be in cyclic garbage."""
    settings = make_settings(backend)
    provider = ConsoleProvider("fcm", io.StringIO())
    provider.concurrency = 4  # batches at once wait for each other's slots: a staffing is stopped waiting
    async with harness(settings, provider) as h:
        gc.collect()
        gc.disable()
        try:
            await asyncio.gather(*(h.deliverer.process(batch_of(phones(40, prefix=f"b{n}-"))) for n in range(3)))
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            cyclic = [type(o).__name__ for o in gc.garbage if isinstance(o, DeliveryBatch | Device)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        sent = (await h.snapshot()).get("delivery:fcm:sent")
    assert sent == 120
    assert cyclic == [], f"{Counter(cyclic)} left in reference cycles"


# --- provider crashes ------------------------------------------------------------------------------


class Crashing(Provider):
    platform: Platform = "fcm"

    async def send(self, batch: DeliveryBatch) -> list[DeliveryResult]:
        raise RuntimeError("a bug in the provider")


async def test_a_provider_that_always_crashes_spends_attempts_then_dead_letters(backend: str) -> None:
    settings = make_settings(backend, delivery_max_attempts=2, claim_lease_s=3, breaker_failure_threshold=100)
    devices = phones(3)
    async with harness(settings, Crashing()) as h:
        await h.deliverer.process(batch_of(devices))
        ((again, delay),) = h.requeued
        assert again.attempt == 2, "an attempt was spent"
        assert delay >= 3, "after the kept claims' lease"
        assert await h.markers("i-1", devices) == {b"inflight": 3}, "the send may have happened: claims kept"
        for device in devices:
            await h.redis.delete(Keys(settings.namespace).delivery_marker("i-1", device.device_id))
        await h.deliverer.process(again)
        snap = await h.snapshot()
        dead: Any = await h.redis.xrange(Keys(settings.namespace).dead_letters())
    assert snap.get("delivery:fcm:dead_lettered") == 3
    assert len(dead) == 1
    assert b"unexpected_error: RuntimeError" in dead[0][1][b"reason"]


# --- leases renewed while a claim is held ----------------------------------------------------------


class Slow(Provider):
    """Accepts every push after ``hold`` is set."""

    platform: Platform = "fcm"

    def __init__(self) -> None:
        self.hold = asyncio.Event()

    async def send(self, batch: DeliveryBatch) -> list[DeliveryResult]:
        await self.hold.wait()
        return [DeliveryResult(device_id=d.device_id, outcome="sent") for d in batch.devices]


async def test_a_claim_outlives_its_lease_while_its_worker_still_sends(backend: str) -> None:
    settings = make_settings(backend, claim_lease_s=1)
    devices = phones(3)
    provider = Slow()
    async with harness(settings, provider) as h:
        task = asyncio.create_task(h.deliverer.process(batch_of(devices)))
        await asyncio.sleep(2.5)  # two and a half leases into a send that has not answered
        held = await h.markers("i-1", devices)
        provider.hold.set()
        await task
        done = await h.markers("i-1", devices)
        snap = await h.snapshot()
    assert held == {b"inflight": 3}, "renewed: another attempt cannot claim them meanwhile"
    assert done == {b"sent": 3}
    assert snap.get("delivery:fcm:sent") == 3


class Gathering(Slow):
    """Holds every push until ``hold`` is set, counting how many are in flight together."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most = 0

    async def send(self, batch: DeliveryBatch) -> list[DeliveryResult]:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            return await super().send(batch)
        finally:
            self.in_flight -= 1


async def test_the_devices_of_a_window_go_out_together_not_one_worker_at_a_time(backend: str) -> None:
    """Workers that find nothing left to claim while a window is being claimed wait for its devices
    (they used to stop, leaving a small batch to the one worker that claimed it)."""
    devices = phones(12)
    provider = Gathering()
    async with harness(make_settings(backend), provider) as h:
        task = asyncio.create_task(h.deliverer.process(batch_of(devices)))
        for _ in range(200):
            if provider.in_flight == len(devices):
                break
            await asyncio.sleep(0.01)
        provider.hold.set()
        await task
        snap = await h.snapshot()
    assert provider.most == len(devices)
    assert snap.get("delivery:fcm:sent") == len(devices)


async def test_batches_waiting_for_the_shared_slots_wait_in_one_place_each_then_take_them_in_turn(
    backend: str,
) -> None:
    """While a batch holds every shared slot, the others wait for one with one task each (``_staff``),
    not with a worker task for every slot they might get (an APNs batch made 500); then all go out."""
    provider = Gathering()
    provider.concurrency = 4
    batches = [batch_of(phones(8, prefix=p)) for p in "abc"]
    async with harness(make_settings(backend), provider) as h:
        before = len(asyncio.all_tasks())
        tasks = [asyncio.create_task(h.deliverer.process(b)) for b in batches]
        for _ in range(200):
            if provider.in_flight == provider.concurrency:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        started = len(asyncio.all_tasks()) - before
        provider.hold.set()
        await asyncio.gather(*tasks)
        snap = await h.snapshot()
    assert provider.most == provider.concurrency
    # Per batch its process, its staffing and its claims' renewal, and the 4 workers holding the slots
    # (a worker per slot and batch would be 3 x 4).
    assert started <= 3 * 3 + provider.concurrency + 1, started
    assert snap.get("delivery:fcm:sent") == 24


# --- answers lost ----------------------------------------------------------------------------------


async def test_a_push_whose_answer_was_lost_keeps_its_claim_so_a_second_copy_does_not_send_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with ApnsSandbox(tmp_path) as apns:
        settings = make_settings(
            "real",
            apns_key_file=str(apns.signing_key("K1")),
            apns_key_id="K1",
            apns_team_id=apns.team_id,
            apns_topic=apns.topic,
            apns_host=apns.host,
            apns_port=apns.port,
            apns_ca_file=str(apns.cert_path),
            apns_timeout_s=0.5,
            claim_lease_s=5,
        )
        devices = tuple(
            Device(device_id=f"a{i}", user_id=f"u{i}", platform="apns", address=f"{i:064x}") for i in range(3)
        )
        batch = batch_of(devices)
        apns.stall_after(0)
        async with harness(settings, ApnsProvider(settings)) as h:
            await h.deliverer.process(batch)  # written, then no answer within the timeout
            ((again, delay),) = h.requeued
            apns.stall_after(None)  # APNs did accept them, late: their answers were lost
            async with asyncio.timeout(5):
                while apns.delivered < 3:
                    await asyncio.sleep(0.02)
            await h.deliverer.process(batch)  # a second copy (a redelivery) while the claims last
            markers = await h.markers("i-1", devices)
            breaker = h.deliverer.breakers[f"apns:{apns.team_id}:K1"]
    assert apns.received == {d.address: 1 for d in devices}, "the second copy sent none of them again"
    assert markers == {b"inflight": 3}, "the claims are kept until their lease ends"
    assert again.attempt == 2
    assert len(again.devices) == 3
    assert delay >= 5, "the retry waits for the kept claims"
    assert breaker.failures >= 3, "counted against the breaker"
    assert not [r for r in caplog.records if r.exc_info], "no crash traceback"
