"""The webhook provider against the sandbox receiver on 127.0.0.1 (allowlisted), end to end."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from goalhorn.catalog.templates import Rendered
from goalhorn.models import DeliveryBatch, Device, EventKind, Intent, Sport
from goalhorn.providers.webhook import (
    WebhookProvider,
    retry_after_seconds,
    sign,
    signing_keys,
    webhook_body,
    webhook_id,
)
from goalhorn.sandbox.webhook_receiver import WebhookReceiver, signature_valid
from goalhorn.settings import Settings

GOAL_DATA = {
    "team": "Arsenal",
    "home_team": "Arsenal",
    "away_team": "Chelsea",
    "home_score": "2",
    "away_score": "1",
    "clock": "67'",
}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def make_intent(intent_id: str = "int-1", template: str = "goal", **data: str) -> Intent:
    now = datetime(2025, 5, 4, 15, 30, tzinfo=UTC)
    return Intent(
        intent_id=intent_id,
        event_id="ev-1",
        kind=EventKind.GOAL,
        sport=Sport.SOCCER,
        game_id="g-1",
        team_id="t-ars",
        priority=8,
        segments=("team:t-ars",),
        template=template,
        data={**GOAL_DATA, **data},
        event_at=now,
        created_at=now,
        expires_at=now + timedelta(minutes=5),
    )


def hook(device_id: str, url: str, secret: str, locale: str = "en") -> Device:
    return Device(
        device_id=device_id,
        user_id=f"u-{device_id}",
        platform="webhook",
        address=url,
        secret=secret,
        locale=locale,
    )


def batch(*devices: Device, intent: Intent | None = None, attempt: int = 1) -> DeliveryBatch:
    return DeliveryBatch(
        batch_id="b-1", platform="webhook", intent=intent or make_intent(), devices=devices, attempt=attempt
    )


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"webhook_allowlist": "127.0.0.1", "webhook_timeout_s": 2.0}
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


class FakeResolver(AbstractResolver):
    """Answers made-up host names from a table, so no test depends on real DNS."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=ip,
                port=port,
                family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for ip in self.table[host]
        ]

    async def close(self) -> None:
        return None


@pytest.fixture
def secrets() -> dict[str, str]:
    return {name: new_secret() for name in ("a", "b", "c", "other")}


@pytest.fixture
async def receiver(secrets: dict[str, str]) -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(secrets.get) as server:
        yield server


@pytest.fixture
async def provider() -> AsyncIterator[WebhookProvider]:
    async with WebhookProvider(settings()) as instance:
        yield instance


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_delivers_a_signed_standard_webhook(receiver, provider, secrets):
    devices = [
        hook("d-a", receiver.endpoint_url("a"), secrets["a"]),
        hook("d-b", receiver.endpoint_url("b"), secrets["b"], "es"),
    ]
    results = await provider.send(batch(*devices))

    assert [r.outcome for r in results] == ["sent", "sent"]
    assert [r.device_id for r in results] == ["d-a", "d-b"]
    assert receiver.endpoint_url("a") == f"{receiver.url}/hooks/a"
    by_endpoint = {got.endpoint: got for got in receiver.deliveries}
    assert set(by_endpoint) == {"a", "b"}
    for endpoint, result in zip(("a", "b"), results, strict=True):
        got = by_endpoint[endpoint]
        assert Webhook(secrets[endpoint]).verify(got.raw, got.headers) == got.body
        assert got.webhook_id == result.provider_message_id
        assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert b", " not in by_endpoint["a"].raw
    assert b'": ' not in by_endpoint["a"].raw
    body = by_endpoint["a"].body
    assert body["type"] == "goal"
    assert body["timestamp"] == "2025-05-04T15:30:00+00:00"
    assert body["data"] == {
        "intent_id": "int-1",
        "event_id": "ev-1",
        "game_id": "g-1",
        "sport": "soccer",
        "team_id": "t-ars",
        "priority": 8,
        "title": "GOAL! Arsenal",
        "body": "Chelsea 1 - 2 Arsenal (67')",
        **GOAL_DATA,
    }
    assert by_endpoint["b"].body["data"]["title"] == "¡GOL! Arsenal"


async def test_rotation_sends_both_signatures_and_each_secret_verifies(receiver, provider, secrets):
    new = new_secret()
    results = await provider.send(batch(hook("d-a", receiver.endpoint_url("a"), f"{new} {secrets['a']}")))

    assert results[0].outcome == "sent"  # the receiver still knows only the old secret
    got = receiver.deliveries[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(got.raw, got.headers) == got.body
    assert Webhook(secrets["a"]).verify(got.raw, got.headers) == got.body
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(got.raw, got.headers)


async def test_a_wrong_secret_is_rejected_by_the_receiver(receiver, provider):
    results = await provider.send(batch(hook("d-a", receiver.endpoint_url("a"), new_secret())))

    assert results[0].outcome == "failed"
    assert (results[0].retryable, results[0].reason) == (False, "http_401")
    assert receiver.deliveries == []


async def test_webhook_id_is_the_same_on_every_retry(receiver, provider, secrets):
    device = hook("d-a", receiver.endpoint_url("a"), secrets["a"])
    receiver.fail_next(1, 500)

    first = await provider.send(batch(device))
    second = await provider.send(batch(device, attempt=2))

    assert (first[0].outcome, first[0].retryable, first[0].reason) == ("failed", True, "http_500")
    assert second[0].outcome == "sent"
    ids = [attempt.webhook_id for attempt in receiver.attempts]
    assert [attempt.status for attempt in receiver.attempts] == [500, 204]
    assert ids[0] == ids[1] == second[0].provider_message_id == webhook_id("int-1", "d-a")
    assert webhook_id("int-1", "d-b") != ids[0] != webhook_id("int-2", "d-a")
    assert Webhook(secrets["a"]).verify(receiver.attempts[0].raw, receiver.attempts[0].headers)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retryable(receiver, provider, secrets, status):
    receiver.fail_next(1, status)
    results = await provider.send(batch(hook("d-a", receiver.endpoint_url("a"), secrets["a"])))

    assert (results[0].outcome, results[0].retryable, results[0].reason) == ("failed", True, f"http_{status}")


async def test_429_is_retryable_after_retry_after_seconds(receiver, provider, secrets):
    receiver.fail_next(1, 429, retry_after=7)
    results = await provider.send(batch(hook("d-a", receiver.endpoint_url("a"), secrets["a"])))

    assert (results[0].outcome, results[0].retryable, results[0].retry_after) == ("failed", True, 7.0)


async def test_429_with_an_http_date_retry_after(receiver, provider, secrets):
    receiver.fail_next(1, 429, retry_after=format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True))
    results = await provider.send(batch(hook("d-a", receiver.endpoint_url("a"), secrets["a"])))

    assert results[0].retryable
    assert results[0].retry_after is not None
    assert 25 <= results[0].retry_after <= 31


def test_retry_after_parsing():
    now = datetime(2025, 5, 4, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds("Sun, 04 May 2025 12:01:00 GMT", now) == 60.0
    assert retry_after_seconds("Sun, 04 May 2025 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


async def test_410_marks_the_endpoint_gone(receiver, provider, secrets):
    receiver.gone.add("a")
    results = await provider.send(batch(hook("d-a", receiver.endpoint_url("a"), secrets["a"])))

    assert (results[0].outcome, results[0].retryable) == ("invalid_token", False)


async def test_other_4xx_is_not_retryable(receiver, provider, secrets):
    receiver.fail_next(1, 422)
    results = await provider.send(batch(hook("d-a", receiver.endpoint_url("a"), secrets["a"])))

    assert (results[0].outcome, results[0].retryable, results[0].reason) == ("failed", False, "http_422")


async def test_a_slow_receiver_times_out_as_retryable(receiver, secrets):
    receiver.delay_s = 5.0
    started = time.monotonic()
    async with WebhookProvider(settings(webhook_timeout_s=0.3)) as provider:
        results = await provider.send(batch(hook("d-a", receiver.endpoint_url("a"), secrets["a"])))

    assert (results[0].outcome, results[0].retryable, results[0].reason) == ("failed", True, "timeout")
    assert time.monotonic() - started < 2.0


async def test_a_redirect_is_not_followed(receiver, provider, secrets):
    receiver.fail_next(1, 307, location=receiver.endpoint_url("other"))
    results = await provider.send(batch(hook("d-a", receiver.endpoint_url("a"), secrets["a"])))

    assert (results[0].outcome, results[0].retryable) == ("failed", False)
    assert results[0].reason == "redirect_refused: http_307"
    assert [attempt.endpoint for attempt in receiver.attempts] == ["a"]


async def test_response_body_is_read_only_up_to_the_cap(secrets):
    """A receiver answering 200 with an endless body must not hold the delivery until the timeout."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        chunk = b"x" * 65536
        while True:
            await response.write(chunk)

    app = web.Application()
    app.router.add_post("/hooks/{endpoint}", endless)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        started = time.monotonic()
        async with WebhookProvider(settings(webhook_timeout_s=3.0)) as provider:
            results = await provider.send(batch(hook("d-a", f"http://127.0.0.1:{port}/hooks/a", secrets["a"])))
        assert results[0].outcome == "sent"
        assert time.monotonic() - started < 2.0
    finally:
        await runner.cleanup()


async def test_one_bad_device_does_not_affect_the_others(receiver, provider, secrets):
    receiver.gone.add("b")
    devices = [
        hook("ok-1", receiver.endpoint_url("a"), secrets["a"]),
        hook("private", "http://10.0.0.1/hooks/x", secrets["a"]),
        hook("gone", receiver.endpoint_url("b"), secrets["b"]),
        hook("scheme", "ftp://127.0.0.1/hooks/a", secrets["a"]),
        hook("refused", f"http://127.0.0.1:{closed_port()}/hooks/a", secrets["a"]),
        hook("bad-secret", receiver.endpoint_url("a"), "whsec_!!!"),
        hook("ok-2", receiver.endpoint_url("c"), secrets["c"]),
    ]
    results = await provider.send(batch(*devices))

    assert [r.device_id for r in results] == [d.device_id for d in devices]
    assert [(r.outcome, r.retryable) for r in results] == [
        ("sent", False),
        ("failed", False),
        ("invalid_token", False),
        ("failed", False),
        ("failed", True),
        ("failed", False),
        ("sent", False),
    ]
    reasons = [r.reason or "" for r in results]
    assert reasons[1].startswith("ssrf_refused: private")
    assert reasons[3].startswith("ssrf_refused: scheme")
    assert reasons[4].startswith("connection_error")
    assert reasons[5].startswith("bad_secret")
    assert sorted(got.endpoint for got in receiver.deliveries) == ["a", "c"]


async def test_concurrency_is_bounded(receiver, secrets):
    receiver.delay_s = 0.2
    devices = [hook(f"d-{i}", receiver.endpoint_url("a"), secrets["a"]) for i in range(6)]
    started = time.monotonic()
    async with WebhookProvider(settings(webhook_concurrency=2)) as provider:
        results = await provider.send(batch(*devices))

    assert all(r.outcome == "sent" for r in results)
    assert time.monotonic() - started >= 0.55  # 6 requests, 2 at a time, 0.2 s each


async def test_localhost_is_refused_without_an_allowlist(receiver, secrets):
    async with WebhookProvider(settings(webhook_allowlist="")) as provider:
        results = await provider.send(
            batch(
                hook("name", receiver.endpoint_url("a").replace("127.0.0.1", "localhost"), secrets["a"]),
                hook("literal", receiver.endpoint_url("a"), secrets["a"]),
            )
        )

    assert [(r.outcome, r.retryable) for r in results] == [("failed", False), ("failed", False)]
    assert all(r.reason is not None and r.reason.startswith("ssrf_refused: loopback") for r in results)
    assert receiver.attempts == []


@pytest.mark.parametrize(
    ("allowlist", "outcome"),
    [("", "failed"), ("hooks.example.test", "sent"), ("127.0.0.0/8", "sent"), ("10.0.0.0/8", "failed")],
)
async def test_a_name_resolving_to_loopback_needs_the_allowlist(receiver, secrets, allowlist, outcome):
    resolver = FakeResolver({"hooks.example.test": ["127.0.0.1"]})
    url = receiver.endpoint_url("a").replace("127.0.0.1", "hooks.example.test")
    async with WebhookProvider(settings(webhook_allowlist=allowlist), resolver=resolver) as provider:
        results = await provider.send(batch(hook("d-a", url, secrets["a"])))

    assert results[0].outcome == outcome
    if outcome == "failed":
        assert results[0].reason == "ssrf_refused: loopback address 127.0.0.1 (from hooks.example.test)"
    assert len(receiver.deliveries) == (1 if outcome == "sent" else 0)


def test_provider_is_built_without_a_running_loop():
    provider = WebhookProvider(settings())
    assert provider._session is None


def test_template_data_cannot_override_the_intent_fields():
    intent = make_intent("int-9").model_copy(update={"data": {**GOAL_DATA, "intent_id": "spoofed", "extra": "yes"}})
    body = webhook_body(intent, Rendered("t", "b"))
    assert b'"intent_id":"int-9"' in body
    assert b"spoofed" not in body
    assert b'"extra":"yes"' in body


def test_receiver_checks_the_timestamp_window():
    secret = new_secret()
    body = b'{"type":"goal"}'
    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(signing_keys(secret), "msg_1", now, body),
    }
    assert signature_valid(secret, headers, body, now=now + 299)
    assert not signature_valid(secret, headers, body, now=now + 301)
    assert not signature_valid(secret, headers, body, now=now - 301)
    assert not signature_valid(secret, headers, body + b" ", now=now)
    assert not signature_valid(new_secret(), headers, body, now=now)
