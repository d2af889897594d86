"""Dispatch against the sandbox servers: breakers, token hygiene, dead letters and pacing, on both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from goalhorn.counters import CounterSnapshot
from goalhorn.dispatch.breaker import Breakers, CircuitBreaker, State
from goalhorn.dispatch.pacing import TokenBucket
from goalhorn.keys import Platform
from goalhorn.models import DeliveryBatch, Device, utcnow
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers import Provider
from goalhorn.providers.apns import ApnsProvider
from goalhorn.providers.fcm import FcmProvider
from goalhorn.providers.webhook import WebhookProvider
from goalhorn.sandbox.apns_server import ApnsSandbox
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.settings import Settings
from tests.conftest import delete_namespace, make_settings
from tests.stages import deliver_all, delivery_stage
from tests.support.builders import make_intent


def devices(n: int, platform: Platform = "fcm", **extra: Any) -> tuple[Device, ...]:
    address = (lambda i: f"{i:064x}") if platform == "apns" else (lambda i: f"tok-{i}")
    return tuple(
        Device(device_id=f"d{i}", user_id=f"u{i}", platform=platform, address=address(i), **extra) for i in range(n)
    )


@dataclass
class Run:
    """What a ``deliver`` run left behind."""

    counters: CounterSnapshot
    breakers: Breakers
    stored_devices: int
    dead_letters: list[Any]


async def deliver(
    settings: Settings, provider: Provider, batches: list[DeliveryBatch], *, seed: tuple[Device, ...] = ()
) -> Run:
    """Run batches through a real delivery stage and worker until every batch is done."""
    async with delivery_stage(settings, provider) as (stage, redis):
        try:
            store = PreferenceStore(redis, stage.keys)
            await store.add_devices(seed)
            snap = await deliver_all(stage, redis, [batch.encode() for batch in batches], 60)
            stored = sum(len(d) for d in await store.devices_of_many([d.user_id for d in seed]))
            assert stage._deliverer is not None
            dead_letters = await redis.xrange(stage.keys.dead_letters()) or []
            return Run(snap, stage._deliverer.breakers, stored, list(dead_letters))
        finally:
            await delete_namespace(redis, settings.namespace)


def batch_of(devs: tuple[Device, ...], platform: Platform = "fcm", intent_id: str = "i-1") -> DeliveryBatch:
    return DeliveryBatch(batch_id=f"b-{intent_id}", platform=platform, intent=make_intent(intent_id), devices=devs)


@pytest.fixture
async def fcm(tmp_path: Path):
    async with FcmSandbox() as server:
        server.service_account(tmp_path / "sa.json")
        yield server


def fcm_settings(backend: str, fcm: FcmSandbox, tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(backend, fcm_credentials_file=str(tmp_path / "sa.json"), fcm_base_url=fcm.url, **overrides)


def state_of(breaker: CircuitBreaker) -> State:
    return breaker.state  # a call, so mypy does not narrow the attribute between steps


def test_breaker_opens_probes_half_open_and_closes() -> None:
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    breaker = CircuitBreaker(threshold=3, open_s=10, clock=clock)
    for _ in range(2):
        assert breaker.admit() == 0
        breaker.record(ok=False)
    assert state_of(breaker) is State.CLOSED
    breaker.record(ok=False)
    assert state_of(breaker) is State.OPEN
    assert breaker.admit() == 10
    now[0] = 10.0
    assert breaker.admit() == 0, "one probe goes out once the open time is over"
    assert state_of(breaker) is State.HALF_OPEN
    assert breaker.admit() > 0, "while it probes, others wait"
    breaker.record(ok=False)
    assert state_of(breaker) is State.OPEN, "a failed probe re-opens"
    now[0] = 20.0
    assert breaker.admit() == 0
    now[0] = 31.0
    assert breaker.admit() == 0, "a probe that never answered is replaced after the open time"
    breaker.record(ok=True)
    assert state_of(breaker) is State.CLOSED
    assert breaker.admit() == 0
    assert breaker.opened_count == 2


async def test_breaker_opens_on_a_503_burst_and_every_device_still_gets_one_push(backend, fcm, tmp_path) -> None:
    settings = fcm_settings(
        backend,
        fcm,
        tmp_path,
        breaker_failure_threshold=5,
        breaker_open_s=0.3,
        retry_base_delay_s=0.05,
        retry_max_delay_s=0.2,
        delivery_max_attempts=20,
    )
    fcm.unavailable_for(1.0)
    run = await deliver(settings, FcmProvider(settings), [batch_of(devices(60))])
    snap, breakers = run.counters, run.breakers

    assert fcm.received == {f"tok-{i}": 1 for i in range(60)}
    assert snap.get("delivery:fcm:sent") == 60
    assert snap.get("breaker_deferred") > 0, "while open, batches were rescheduled, not sent"
    breaker = breakers[f"fcm:{fcm.project_id}"]
    assert breaker.opened_count >= 1
    assert breaker.state is State.CLOSED, "a successful probe closed it again"


async def test_unregistered_tokens_are_pruned_and_never_trip_the_breaker(backend, fcm, tmp_path) -> None:
    settings = fcm_settings(backend, fcm, tmp_path, breaker_failure_threshold=3)
    seed = devices(20)
    fcm.unregistered.update(f"tok-{i}" for i in range(10))
    run = await deliver(settings, FcmProvider(settings), [batch_of(seed)], seed=seed)
    snap, breakers = run.counters, run.breakers

    assert snap.get("delivery:fcm:invalid_token") == 10
    assert snap.get("delivery:fcm:sent") == 10
    assert snap.get("tokens_removed") == 10
    assert run.stored_devices == 10, "the dead tokens' devices are gone, the others stay"
    assert snap.get("breaker_deferred") == 0
    assert breakers[f"fcm:{fcm.project_id}"].opened_count == 0


async def test_apns_410_removes_only_devices_registered_before_the_token_died(backend, tmp_path) -> None:
    async with ApnsSandbox(tmp_path) as apns:
        settings = make_settings(
            backend,
            apns_key_file=str(apns.signing_key("K1")),
            apns_key_id="K1",
            apns_team_id=apns.team_id,
            apns_topic=apns.topic,
            apns_host=apns.host,
            apns_port=apns.port,
            apns_ca_file=str(apns.cert_path),
        )
        died = utcnow() - timedelta(hours=1)
        old, fresh = devices(2, "apns")
        old = old.model_copy(update={"added_at": died - timedelta(days=1)})
        fresh = fresh.model_copy(update={"added_at": died + timedelta(minutes=5)})  # re-registered since
        apns.unregistered.update(
            {old.address: int(died.timestamp() * 1000), fresh.address: int(died.timestamp() * 1000)}
        )
        run = await deliver(settings, ApnsProvider(settings), [batch_of((old, fresh), "apns")], seed=(old, fresh))
    snap = run.counters
    assert snap.get("delivery:apns:invalid_token") == 2
    assert snap.get("tokens_removed") == 1
    assert snap.get("tokens_kept_reregistered") == 1
    assert run.stored_devices == 1


async def test_dead_letters_after_the_last_retry_with_the_reason(backend, fcm, tmp_path) -> None:
    settings = fcm_settings(
        backend, fcm, tmp_path, delivery_max_attempts=2, retry_base_delay_s=0.05, breaker_failure_threshold=1000
    )
    fcm.unavailable_for(60)
    run = await deliver(settings, FcmProvider(settings), [batch_of(devices(7))])
    snap, seen = run.counters, run.dead_letters
    assert snap.get("dead_letters") == 7
    assert snap.get("delivery:fcm:dead_lettered") == 7
    assert snap.get("retries") == 7
    assert len(seen) == 1
    reason = seen[0][1][b"reason"].decode()
    assert reason.startswith("attempts exhausted (2)")
    assert "UNAVAILABLE x7" in reason
    assert DeliveryBatch.from_json(seen[0][1][b"batch"]).attempt == 2
    assert fcm.received == {}


async def test_one_failing_webhook_endpoint_opens_only_its_own_circuit() -> None:
    provider = WebhookProvider(Settings())
    a, b = (
        Device(device_id=x, user_id="u", platform="webhook", address=f"https://{x}.example/hook", secret="whsec_aGk=")
        for x in "ab"
    )
    assert provider.circuit(a) != provider.circuit(b)
    await provider.aclose()


async def test_token_bucket_smooths_a_burst_to_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=100, burst=10)
    started = time.monotonic()
    await asyncio.gather(*(bucket.take() for _ in range(40)))
    assert time.monotonic() - started >= 0.29, "30 tokens beyond the burst need 0.3 s at 100/s"


def test_a_process_forgets_idle_circuits_and_keeps_those_that_matter() -> None:
    breakers = Breakers(threshold=2, open_s=60, keep=8)
    failing, busy = breakers["https://failing.example/hook"], breakers["https://busy.example/hook"]
    failing.record(ok=False)  # one failure: remembered, or the next would not open it
    assert busy.admit() == 0  # a request in flight: its answer must find it
    for n in range(200):  # endpoints answered once, then never again (a goal to 50,000 of them)
        breaker = breakers[f"https://ok-{n}.example/hook"]
        assert breaker.admit() == 0
        breaker.record(ok=True)
        breaker.registered = True  # listed in Redis by the board's publish
    assert len(breakers) <= 16, "idle circuits are forgotten, not held for ever"
    assert breakers["https://failing.example/hook"] is failing
    assert breakers["https://busy.example/hook"] is busy
    failing.record(ok=False)
    assert failing.state is State.OPEN
    for n in range(200, 400):
        ok = breakers[f"https://ok-{n}.example/hook"]
        ok.registered = True
    assert breakers["https://failing.example/hook"] is failing, "an open circuit is never forgotten"
    unlisted = Breakers(threshold=2, open_s=60, keep=4)
    first = unlisted["https://new.example/hook"]
    for n in range(20):
        unlisted[f"https://other-{n}.example/hook"]
    assert unlisted["https://new.example/hook"] is first, "not listed in Redis yet: kept until it is"
