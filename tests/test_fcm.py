"""The FCM provider against the sandbox FCM v1 server, errors included; firebase-admin's own client too."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import firebase_admin
import pytest
from firebase_admin import messaging

from goalhorn.catalog import default_catalog
from goalhorn.errors import ProviderAuthError
from goalhorn.models import DeliveryBatch, Device
from goalhorn.providers import collapse_id
from goalhorn.providers.fcm import FcmProvider, build_message, result_for_response
from goalhorn.sandbox.fcm_server import FcmSandbox, sandbox_certificate
from goalhorn.settings import Settings
from tests.support.builders import make_intent

FIXTURES = Path(__file__).parent / "fixtures" / "push"


def fcm_batch(n: int, intent_id: str = "i-fcm") -> DeliveryBatch:
    devices = tuple(Device(device_id=f"d{i}", user_id=f"u{i}", platform="fcm", address=f"tok-{i}") for i in range(n))
    return DeliveryBatch(batch_id="b", platform="fcm", intent=make_intent(intent_id), devices=devices)


@pytest.fixture
async def sandbox():
    async with FcmSandbox() as server:
        yield server


@pytest.fixture
def fcm_settings(sandbox: FcmSandbox, tmp_path: Path) -> Settings:
    path = sandbox.service_account(tmp_path / "sa.json")
    return Settings(fcm_credentials_file=str(path), fcm_base_url=sandbox.url)


async def test_sends_each_device_once_with_a_validated_message(sandbox, fcm_settings) -> None:
    async with FcmProvider(fcm_settings) as provider:
        results = await provider.send(fcm_batch(50))
    assert [r.device_id for r in results] == [f"d{i}" for i in range(50)]
    assert {r.outcome for r in results} == {"sent"}
    assert all(r.provider_message_id and r.provider_message_id.startswith("projects/") for r in results)
    assert sandbox.received == {f"tok-{i}": 1 for i in range(50)}
    assert sandbox.tokens_issued == 1, "one OAuth token serves every send"
    message = sandbox.messages[0]
    assert message["android"]["priority"] == "high"
    assert message["android"]["ttl"].endswith("s")
    assert 0 < float(message["android"]["ttl"][:-1]) <= 300
    assert message["apns"]["headers"]["apns-priority"] == "10"
    assert message["notification"]["title"] == "GOAL! NYC"
    assert message["data"]["intent_id"] == "i-fcm"


async def test_low_priority_intent_is_normal_and_collapses() -> None:
    intent = make_intent().model_copy(update={"priority": 2, "collapse_key": "g1-score"})
    message = build_message(intent, "en", default_catalog().render)
    assert message["android"]["priority"] == "normal"
    assert message["android"]["collapse_key"] == "g1-score"
    assert message["apns"]["headers"] == {
        "apns-priority": "5",
        "apns-collapse-id": "g1-score",
        "apns-expiration": str(int(intent.expires_at.timestamp())),
    }
    long_key = "g1-" + "x" * 80
    relayed = build_message(intent.model_copy(update={"collapse_key": long_key}), "en", default_catalog().render)
    assert relayed["apns"]["headers"]["apns-collapse-id"] == collapse_id(long_key), "APNs takes 64 bytes at most"


async def test_unregistered_and_malformed_tokens_are_per_token_outcomes(sandbox, fcm_settings) -> None:
    sandbox.unregistered.add("tok-1")
    batch = fcm_batch(3).model_copy()
    bad = Device(device_id="d-bad", user_id="u", platform="fcm", address="has space")
    batch = batch.model_copy(update={"devices": (*batch.devices, bad)})
    async with FcmProvider(fcm_settings) as provider:
        results = {r.device_id: r for r in await provider.send(batch)}
    assert results["d1"].outcome == "invalid_token"
    assert results["d1"].reason == "UNREGISTERED"
    assert results["d-bad"].outcome == "invalid_token"
    assert not results["d-bad"].retryable
    assert results["d0"].outcome == results["d2"].outcome == "sent"
    assert "tok-1" not in sandbox.received


async def test_quota_and_server_errors_are_retryable_with_retry_after(sandbox, fcm_settings) -> None:
    sandbox.fail_next(1, 429, retry_after=7)
    sandbox.fail_next(1, 503)
    async with FcmProvider(fcm_settings) as provider:
        first = (await provider.send(fcm_batch(1)))[0]
        second = (await provider.send(fcm_batch(1)))[0]
        third = (await provider.send(fcm_batch(1)))[0]
    assert (first.outcome, first.retryable, first.retry_after, first.reason) == ("failed", True, 7.0, "QUOTA_EXCEEDED")
    assert (second.outcome, second.retryable, second.reason) == ("failed", True, "UNAVAILABLE")
    assert third.outcome == "sent"


async def test_rejected_credentials_fail_the_whole_batch(sandbox, tmp_path) -> None:
    path = sandbox.service_account(tmp_path / "untrusted.json", trusted=False)
    settings = Settings(fcm_credentials_file=str(path), fcm_base_url=sandbox.url)
    async with FcmProvider(settings) as provider:
        with pytest.raises(ProviderAuthError):
            await provider.send(fcm_batch(2))
    assert sandbox.received == {}


async def test_sandbox_accepts_token_and_fid_and_rejects_bad_payloads(sandbox, fcm_settings) -> None:
    async with FcmProvider(fcm_settings) as provider:
        token = await provider.access_token()
        url = provider.url
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:

        async def post(message) -> tuple[int, dict]:
            async with session.post(url, json={"message": message}, headers=headers) as response:
                return response.status, await response.json()

        assert (await post({"token": "a"}))[0] == 200
        assert (await post({"fid": "b"}))[0] == 200
        status, body = await post({"token": "a", "fid": "b"})
        assert status == 400
        assert body["error"]["status"] == "INVALID_ARGUMENT"
        assert (await post({"token": "c", "data": {"n": 1}}))[0] == 400
        assert (await post({"token": "c", "android": {"priority": "urgent"}}))[0] == 400
        assert (await post({"token": "c", "data": {"x": "y" * 5000}}))[0] == 400
        async with session.post(url, json={"message": {"token": "a"}}) as response:
            assert response.status == 401
    assert sandbox.received == {"a": 1, "b": 1}


def test_recorded_fcm_errors_map_to_outcomes() -> None:
    samples = json.loads((FIXTURES / "fcm_v1_responses_pushiko.json").read_text())
    device = Device(device_id="d", user_id="u", platform="fcm", address="t")

    def outcome(name: str, status: int) -> tuple[str, bool]:
        result = result_for_response(device, status, samples[name], None)
        return result.outcome, result.retryable

    assert outcome("Verification only", 200) == ("sent", False)
    assert outcome("Unregistered token", 404) == ("invalid_token", False)
    assert outcome("Invalid registration token", 400) == ("invalid_token", False)
    assert outcome("Missing registration token", 400) == ("failed", False)
    assert outcome("Payload too large", 400) == ("failed", False)
    assert outcome("Internal server error", 500) == ("failed", True)
    assert outcome("Unavailable", 503) == ("failed", True)


async def test_firebase_admins_own_client_works_against_the_sandbox(sandbox, fcm_settings, monkeypatch) -> None:
    monkeypatch.setattr(messaging._MessagingService, "FCM_URL", sandbox.url + "/v1/projects/{0}/messages:send")
    app = firebase_admin.initialize_app(
        sandbox_certificate(fcm_settings.fcm_credentials_file), name=f"sandbox-{id(sandbox)}"
    )
    try:
        sandbox.unregistered.add("f2")
        multicast = messaging.MulticastMessage(fids=["f1", "f2"], notification=messaging.Notification("t", "b"))
        response = await asyncio.to_thread(messaging.send_each_for_multicast, multicast, app=app)
    finally:
        await asyncio.to_thread(firebase_admin.delete_app, app)  # it runs its own event loop
    assert response.success_count == 1
    assert isinstance(response.responses[1].exception, messaging.UnregisteredError)
    assert sandbox.received == {"f1": 1}


@pytest.fixture
def sandbox_elsewhere(tmp_path: Path) -> Iterator[tuple[FcmSandbox, Settings, asyncio.AbstractEventLoop]]:
    """The FCM sandbox on an event loop of its own (a thread), so it answers while the test's loop stalls."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FcmSandbox()
    asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(10)
    try:
        path = server.service_account(tmp_path / "sa.json")
        yield server, Settings(fcm_credentials_file=str(path), fcm_base_url=server.url, fcm_timeout_s=0.5), loop
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def test_an_answer_that_arrived_while_the_worker_stalled_is_not_a_timeout(
    sandbox_elsewhere: tuple[FcmSandbox, Settings, asyncio.AbstractEventLoop],
) -> None:
    sandbox, settings, sandbox_loop = sandbox_elsewhere
    batch = fcm_batch(1)
    async with FcmProvider(settings) as provider:
        send = await provider.prepare(batch)
        sandbox_loop.call_soon_threadsafe(sandbox.stall_after, 0)
        sending = asyncio.ensure_future(send(batch.devices[0]))
        async with asyncio.timeout(5):
            while not sandbox.stalled:
                await asyncio.sleep(0.001)
        sandbox_loop.call_soon_threadsafe(sandbox.stall_after, None)
        time.sleep(1.0)  # noqa: ASYNC251 - the stall itself: the answer arrives while the loop is blocked
        result = await sending
    assert sandbox.received == {"tok-0": 1}
    assert result.outcome == "sent", "FCM accepted it: a timeout would send it again"
