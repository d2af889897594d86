"""A message that cannot be rendered fails its device, never the send: every provider reports a
``render_failed`` message error, and the delivery stage dead-letters it with that reason, without
retrying it and without counting it against (or for) the provider's circuit breaker."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from goalhorn.catalog import Catalog
from goalhorn.counters import PipelineCounters
from goalhorn.dispatch.breaker import State
from goalhorn.dispatch.delivery import Deliverer
from goalhorn.keys import Keys, Platform
from goalhorn.models import DeliveryBatch, DeliveryResult, Device, EncodedBatch, Intent
from goalhorn.providers import Provider
from goalhorn.providers.apns import ApnsProvider
from goalhorn.providers.console import ConsoleProvider
from goalhorn.providers.fcm import FcmProvider
from goalhorn.providers.webhook import WebhookProvider
from goalhorn.redis_client import Redis
from goalhorn.sandbox.apns_server import ApnsSandbox
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.sandbox.webhook_receiver import WebhookReceiver
from goalhorn.settings import Settings
from tests.conftest import make_settings
from tests.stages import deliver_all, delivery_stage
from tests.support.builders import make_intent

WEBHOOK_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="

CATALOG = Catalog(
    rules=(),
    segments={},
    templates={
        # As if a bad edit got past validation: English renders, German reaches into the value.
        "goal": {"en": ("GOAL! {team}", "{home_score}-{away_score} ({clock})"), "de": ("TOR {team[99]}", "x")},
        "broken": {"en": ("GOAL {team.__class__.__mro__}", "{0}")},
    },
)


def without(intent: Intent, field: str) -> Intent:
    """The intent as one made before its template used ``field`` would be."""
    return intent.model_copy(update={"data": {k: v for k, v in intent.data.items() if k != field}})


def devices(platform: Platform, address: Callable[[int], str], n: int, locale: str = "en") -> tuple[Device, ...]:
    return tuple(
        Device(
            device_id=f"{locale}{i}",
            user_id=f"u{i}",
            platform=platform,
            address=address(i),
            secret=WEBHOOK_SECRET if platform == "webhook" else None,
            locale=locale,
        )
        for i in range(n)
    )


@asynccontextmanager
async def fcm(tmp_path: Path) -> AsyncIterator[tuple[Provider, Callable[[int], str], Callable[[], int]]]:
    async with FcmSandbox() as sandbox:
        settings = Settings(
            fcm_credentials_file=str(sandbox.service_account(tmp_path / "sa.json")), fcm_base_url=sandbox.url
        )
        async with FcmProvider(settings, render=CATALOG.render) as provider:
            yield provider, lambda i: f"tok-{i}", lambda: sum(sandbox.received.values())


@asynccontextmanager
async def apns(tmp_path: Path) -> AsyncIterator[tuple[Provider, Callable[[int], str], Callable[[], int]]]:
    async with ApnsSandbox(tmp_path) as sandbox:
        settings = Settings(
            apns_key_file=str(sandbox.signing_key("KEY1")),
            apns_key_id="KEY1",
            apns_team_id=sandbox.team_id,
            apns_topic=sandbox.topic,
            apns_host=sandbox.host,
            apns_port=sandbox.port,
            apns_ca_file=str(sandbox.cert_path),
            apns_timeout_s=5.0,
        )
        async with ApnsProvider(settings, render=CATALOG.render) as provider:
            yield provider, lambda i: f"{i:064x}", lambda: sum(sandbox.received.values())


@asynccontextmanager
async def webhook(tmp_path: Path) -> AsyncIterator[tuple[Provider, Callable[[int], str], Callable[[], int]]]:
    async with WebhookReceiver(lambda endpoint: WEBHOOK_SECRET) as receiver:
        settings = Settings(webhook_allowlist="127.0.0.1", webhook_timeout_s=5.0)
        async with WebhookProvider(settings, render=CATALOG.render) as provider:
            yield provider, lambda i: receiver.endpoint_url(f"e{i}"), lambda: len(receiver.deliveries)


@asynccontextmanager
async def console(tmp_path: Path) -> AsyncIterator[tuple[Provider, Callable[[int], str], Callable[[], int]]]:
    out = io.StringIO()
    async with ConsoleProvider("fcm", out, render=CATALOG.render) as provider:
        yield provider, lambda i: f"tok-{i}", lambda: len(out.getvalue().splitlines())


@pytest.mark.parametrize("kind", [fcm, apns, webhook, console], ids=lambda f: f.__name__)
async def test_every_provider_fails_only_the_devices_whose_message_cannot_render(kind, tmp_path) -> None:
    async with kind(tmp_path) as (provider, address, delivered):
        good = devices(provider.platform, address, 3)
        bad = devices(provider.platform, lambda i: address(10 + i), 2, locale="de")
        batch = DeliveryBatch(batch_id="b", platform=provider.platform, intent=make_intent("i1"), devices=good + bad)
        results = await provider.send(batch)
        missing = DeliveryBatch(
            batch_id="b2", platform=provider.platform, intent=without(make_intent("i2"), "clock"), devices=good[:1]
        )
        old = await provider.send(missing)
        assert delivered() == 3
    assert [r.outcome for r in results] == ["sent"] * 3 + ["failed"] * 2
    for result in [*results[3:], *old]:
        assert (result.retryable, result.message_error) == (False, True)
        assert result.reason is not None
        assert result.reason.startswith("render_failed: template 'goal'")
    assert "field {team[99]} reaches into a value" in (results[3].reason or "")
    assert old[0].reason == "render_failed: template 'goal' needs field 'clock', which the intent lacks"


def console_batch(batch_id: str, intent: Intent, n: int) -> EncodedBatch:
    phones = devices("fcm", lambda i: f"tok-{batch_id}-{i}", n)
    phones = tuple(d.model_copy(update={"device_id": f"{batch_id}-{d.device_id}"}) for d in phones)
    return DeliveryBatch(batch_id=batch_id, platform="fcm", intent=intent, devices=phones).encode()


async def test_a_batch_that_cannot_render_is_dead_lettered_with_its_reason_and_the_others_deliver(
    backend: str,
) -> None:
    settings = make_settings(backend, breaker_failure_threshold=3, delivery_max_attempts=2)
    out = io.StringIO()
    old = without(make_intent("old"), "clock")
    broken = make_intent("broken", template="broken")
    unrenderable = [console_batch("broken", broken, 10), console_batch("old", old, 10)]
    good = [console_batch(f"good{i}", make_intent(f"good{i}"), 10) for i in range(3)]
    async with delivery_stage(settings, ConsoleProvider("fcm", out, render=CATALOG.render)) as (stage, redis):
        first = await deliver_all(stage, redis, unrenderable, timeout_s=20)
        snap = await deliver_all(stage, redis, good, timeout_s=20)
        entries: Any = await redis.xrange(Keys(settings.namespace).dead_letters())

    assert first.get("delivery:fcm:dead_lettered") == 20
    assert snap.get("delivery:fcm:sent") == 30, "the good batches deliver after the bad ones"
    assert snap.get("dead_letters") == 20
    for counter in ("retries", "held_requeued", "breaker_deferred", "delivery:fcm:failed"):
        assert snap.get(counter) == 0, counter
    assert len(out.getvalue().splitlines()) == 30
    assert all(line.split(" | ")[0].split()[2].startswith("good") for line in out.getvalue().splitlines())
    dead = {
        DeliveryBatch.from_json(fields[b"batch"]).intent.intent_id: fields[b"reason"].decode() for _, fields in entries
    }
    assert dead["old"] == "render_failed: template 'goal' needs field 'clock', which the intent lacks"
    assert dead["broken"].startswith("render_failed: template 'broken': field {team.__class__.__mro__} reaches")
    assert len(entries) == 2
    assert all(len(DeliveryBatch.from_json(fields[b"batch"]).devices) == 10 for _, fields in entries)


async def test_a_render_failure_neither_resets_nor_takes_the_probe_of_a_breaker(settings: Settings, redis: Redis):
    settings = settings.model_copy(update={"breaker_failure_threshold": 2, "breaker_open_s": 0.2})
    out = io.StringIO()
    enqueued: list[tuple[EncodedBatch, float]] = []

    async def enqueue(batch: EncodedBatch, delay_s: float) -> None:
        enqueued.append((batch, delay_s))

    provider = ConsoleProvider("fcm", out, render=CATALOG.render)
    deliverer = Deliverer(settings, redis, {"fcm": provider}, enqueue)
    breaker = deliverer.breakers["fcm"]
    try:
        breaker.record(ok=False)
        unrenderable = console_batch("b1", make_intent("b1", template="broken"), 5)
        await deliverer.process(DeliveryBatch.from_json(unrenderable.payload))
        assert (breaker.state, breaker.failures) == (State.CLOSED, 1), "a render failure is not a provider success"
        breaker.record(ok=False)
        assert breaker.state is State.OPEN
        await asyncio.sleep(0.25)
        unrenderable = console_batch("b2", make_intent("b2", template="broken"), 1)
        await deliverer.process(DeliveryBatch.from_json(unrenderable.payload))
        await deliverer.process(DeliveryBatch.from_json(console_batch("b3", make_intent("b3"), 1).payload))
        assert enqueued == [], "the good send was the probe, not deferred behind a probe that never reported"
        assert deliverer.breakers.states() == {"fcm": State.CLOSED}
        assert len(out.getvalue().splitlines()) == 1
        snap = await PipelineCounters(redis, Keys(settings.namespace)).snapshot()
        assert (snap.get("dead_letters"), snap.get("delivery:fcm:sent")) == (6, 1)
    finally:
        await deliverer.aclose()


def test_a_message_error_is_a_failure_no_retry_fixes() -> None:
    with pytest.raises(ValueError, match="no retry fixes"):
        DeliveryResult(device_id="d", outcome="failed", retryable=True, message_error=True)
    with pytest.raises(ValueError, match="no retry fixes"):
        DeliveryResult(device_id="d", outcome="sent", message_error=True)
