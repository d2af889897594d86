"""The APNs provider (aioapns) against the HTTP/2 + TLS sandbox, errors included."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from goalhorn.models import DeliveryBatch, Device
from goalhorn.providers import collapse_id
from goalhorn.providers.apns import ApnsProvider, result_for_notification
from goalhorn.sandbox.apns_server import ApnsSandbox
from goalhorn.settings import Settings
from tests.processes import free_port
from tests.support.builders import make_intent

FIXTURES = Path(__file__).parent / "fixtures" / "push"


def token(i: int) -> str:
    return f"{i:064x}"


def apns_batch(n: int, **intent_update) -> DeliveryBatch:
    devices = tuple(Device(device_id=f"d{i}", user_id=f"u{i}", platform="apns", address=token(i)) for i in range(n))
    intent = make_intent("i-apns").model_copy(update=intent_update)
    return DeliveryBatch(batch_id="b", platform="apns", intent=intent, devices=devices)


@pytest.fixture
async def sandbox(tmp_path: Path):
    async with ApnsSandbox(tmp_path) as server:
        yield server


def settings_for(sandbox: ApnsSandbox, key_id: str = "KEY1", *, trusted: bool = True) -> Settings:
    return Settings(
        apns_key_file=str(sandbox.signing_key(key_id, trusted=trusted)),
        apns_key_id=key_id,
        apns_team_id=sandbox.team_id,
        apns_topic=sandbox.topic,
        apns_host=sandbox.host,
        apns_port=sandbox.port,
        apns_ca_file=str(sandbox.cert_path),
        apns_timeout_s=2.0,
    )


async def test_sends_each_device_once_with_the_intents_headers(sandbox) -> None:
    batch = apns_batch(40, collapse_key="g1-score")
    async with ApnsProvider(settings_for(sandbox)) as provider:
        results = await provider.send(batch)
    assert [r.outcome for r in results] == ["sent"] * 40
    assert sandbox.received == {token(i): 1 for i in range(40)}
    request = sandbox.requests[0]
    assert request.headers["apns-priority"] == "10"
    assert request.headers["apns-push-type"] == "alert"
    assert request.headers["apns-collapse-id"] == "g1-score"
    assert request.headers["apns-topic"] == sandbox.topic
    assert abs(int(request.headers["apns-expiration"]) - batch.intent.expires_at.timestamp()) <= 2
    assert request.payload["aps"]["alert"]["title"] == "GOAL! NYC"
    assert results[0].provider_message_id == next(r.headers["apns-id"] for r in sandbox.requests if r.token == token(0))


async def test_low_priority_background_and_live_activity(sandbox) -> None:
    async with ApnsProvider(settings_for(sandbox)) as provider:
        low = await provider.send(apns_batch(1, priority=2))
        background = await provider.send(apns_batch(1, data={"apns_push_type": "background"}))
        live = await provider.send(apns_batch(1, data={**make_intent().data, "apns_push_type": "liveactivity"}))
    assert [r[0].outcome for r in (low, background, live)] == ["sent"] * 3
    low_req, background_req, live_req = sandbox.requests
    assert low_req.headers["apns-priority"] == "5"
    assert background_req.headers["apns-push-type"] == "background"
    assert background_req.headers["apns-priority"] == "5"
    assert background_req.payload["aps"] == {"content-available": 1}
    assert live_req.headers["apns-topic"] == sandbox.topic + ".push-type.liveactivity"
    assert live_req.payload["aps"]["event"] == "update"


async def test_per_token_errors_carry_the_410_timestamp(sandbox) -> None:
    sandbox.unregistered[token(1)] = 1637679125000
    batch = apns_batch(3)
    bad = Device(device_id="d-bad", user_id="u", platform="apns", address="not-hex")
    batch = batch.model_copy(update={"devices": (*batch.devices, bad)})
    async with ApnsProvider(settings_for(sandbox)) as provider:
        results = {r.device_id: r for r in await provider.send(batch)}
    assert results["d1"].outcome == "invalid_token"
    assert results["d1"].invalid_since is not None
    assert results["d1"].invalid_since.timestamp() == 1637679125.0
    assert results["d-bad"].outcome == "invalid_token"
    assert results["d-bad"].reason == "BadDeviceToken"
    assert {results["d0"].outcome, results["d2"].outcome} == {"sent"}


async def test_throttling_outages_and_bad_credentials_are_retryable(sandbox) -> None:
    sandbox.fail_next(1, 429, "TooManyRequests")
    async with ApnsProvider(settings_for(sandbox)) as provider:
        throttled = (await provider.send(apns_batch(1)))[0]
        sandbox.unavailable_for(30)
        unavailable = (await provider.send(apns_batch(1)))[0]
    async with ApnsProvider(settings_for(sandbox, "KEY2", trusted=False)) as provider:
        rejected = (await provider.send(apns_batch(1)))[0]
    assert (throttled.outcome, throttled.retryable, throttled.reason) == ("failed", True, "TooManyRequests")
    assert (unavailable.retryable, unavailable.reason) == (True, "ServiceUnavailable")
    assert (rejected.retryable, rejected.reason) == (True, "InvalidProviderToken")
    assert sandbox.received == {}


async def test_a_slow_server_times_out_as_retryable(sandbox) -> None:
    sandbox.delay_s = 5
    settings = settings_for(sandbox).model_copy(update={"apns_timeout_s": 0.3})
    async with ApnsProvider(settings) as provider:
        result = (await provider.send(apns_batch(1)))[0]
    assert (result.outcome, result.retryable, result.reason) == ("failed", True, "timeout")


def test_recorded_apns_errors_map_to_outcomes() -> None:
    from aioapns.common import NotificationResult

    samples = json.loads((FIXTURES / "apns_error_bodies.json").read_text())
    device = Device(device_id="d", user_id="u", platform="apns", address="t")
    for name, body in samples.items():
        status = name.split("_", 1)[0]
        result = result_for_notification(
            device, NotificationResult("id", status, body["reason"], body.get("timestamp"))
        )
        expected = "failed" if body["reason"] == "MissingDeviceToken" else "invalid_token"
        assert result.outcome == expected, name
        assert not result.retryable


async def test_a_collapse_key_longer_than_64_bytes_is_cut_with_a_hash_and_every_push_goes(sandbox) -> None:
    long_key = "game:" + "é" * 40 + ":score"  # 91 bytes of UTF-8
    async with ApnsProvider(settings_for(sandbox)) as provider:
        results = await provider.send(apns_batch(3, collapse_key=long_key))
        other = await provider.send(apns_batch(1, collapse_key=long_key.replace("score", "state")))
    assert [r.outcome for r in results + other] == ["sent"] * 4
    sent = [request.headers["apns-collapse-id"] for request in sandbox.requests]
    assert all(len(collapse.encode()) <= 64 for collapse in sent)
    assert len(set(sent[:3])) == 1, "the same key gives the same id on every push"
    assert sent[3] != sent[0], "another key, another id"
    assert sent[0] == collapse_id(long_key)
    assert collapse_id("g1-score") == "g1-score", "a key that fits is kept as it is"


async def test_a_connection_closed_under_a_request_is_an_answer_lost_not_a_crash(sandbox) -> None:
    batch = apns_batch(3)
    sandbox.stall_after(0)
    async with ApnsProvider(settings_for(sandbox)) as provider:
        send = await provider.prepare(batch)
        sending = asyncio.gather(*(send(device) for device in batch.devices))
        async with asyncio.timeout(5):
            while sandbox.stalled < 3:
                await asyncio.sleep(0.02)
        for connection in list(provider._apns().pool.connections):
            assert connection.transport is not None
            connection.transport.abort()  # the HTTP/2 connection drops with the requests on it
        results = await sending
    assert [(r.outcome, r.retryable, r.maybe_sent) for r in results] == [("failed", True, True)] * 3


async def test_a_request_that_never_reached_a_connection_is_not_an_answer_lost(sandbox) -> None:
    settings = settings_for(sandbox).model_copy(update={"apns_port": free_port(), "apns_timeout_s": 1.0})
    async with ApnsProvider(settings) as provider:
        (result,) = await provider.send(apns_batch(1))
    assert (result.outcome, result.retryable, result.maybe_sent) == ("failed", True, False)


async def test_a_connection_forgets_each_request_once_answered(sandbox) -> None:
    # aioapns maps each stream to its request and dropped the pair only on an error answer: a connection
    # held every accepted push's pair until it closed (50 MB through the APNs share of a 1M goal).
    async with ApnsProvider(settings_for(sandbox)) as provider:
        results = await provider.send(apns_batch(300))
        sandbox.unregistered[token(7)] = 1637679125000
        again = await provider.send(apns_batch(20))
        connections = list(provider._apns().pool.connections)
        assert connections
        for connection in connections:
            assert connection.request_streams == {}
            assert connection.request_statuses == {}
            assert connection.requests == {}
            assert len(connection.conn._closed_streams) <= 1024
    assert [r.outcome for r in results] == ["sent"] * 300
    assert [r.outcome for r in again].count("invalid_token") == 1


async def test_an_error_status_without_a_body_is_an_answer(sandbox) -> None:
    async with ApnsProvider(settings_for(sandbox)) as provider:
        await provider.send(apns_batch(1))
        connection = next(iter(provider._apns().pool.connections))
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        connection.requests["n1"] = answer
        connection.request_streams[99] = "n1"
        connection.on_response_received({b"apns-id": b"n1", b":status": b"500"})
        assert not answer.done()  # the status waits for a body, as aioapns has it
        connection.free_channels.release = lambda: None  # type: ignore[method-assign]  # it took no channel
        connection.on_stream_ended(99)
        result = answer.result()
        assert (result.status, result.is_successful) == ("500", False)
        assert connection.request_statuses == {}
        assert 99 not in connection.request_streams
        # an answer that names no request answers nothing: that request stays, for its timeout to find written
        unanswered: asyncio.Future = asyncio.get_running_loop().create_future()
        connection.requests["n2"] = unanswered
        connection.request_streams[98] = "n2"
        connection.on_response_received({b":status": b"200"})
        connection.on_stream_ended(98)
        assert not unanswered.done()
        assert connection.requests.pop("n2") is unanswered


async def test_a_token_that_cannot_be_one_is_refused_without_a_request(sandbox) -> None:
    devices = (
        Device(device_id="bad", user_id="u", platform="apns", address="zz top\r\n"),
        Device(device_id="ok", user_id="u", platform="apns", address=token(1)),
    )
    batch = DeliveryBatch(batch_id="b", platform="apns", intent=make_intent("i-apns"), devices=devices)
    async with ApnsProvider(settings_for(sandbox)) as provider:
        bad, ok = await provider.send(batch)
    assert (bad.outcome, bad.reason) == ("invalid_token", "BadDeviceToken")
    assert ok.outcome == "sent"
    assert sandbox.received == {token(1): 1}


def test_request_headers_decode_as_sent_and_per_request_values_stay_out_of_the_table() -> None:
    from hpack import Decoder

    from goalhorn.providers.apns import _RequestHeaders

    encoder, decoder = _RequestHeaders(), Decoder()
    for i in range(50):
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", f"/3/device/{token(i)}"),
            ("host", "api.push.apple.com"),
            ("apns-id", f"id-{i}"),
            ("apns-topic", "com.example.app"),
            ("apns-expiration", str(1_800_000_000 + i)),
            ("authorization", "bearer eyJ.secret.sig"),
        ]
        block = encoder.encode(headers)
        decoded: list[tuple[object, ...]] = [tuple(header) for header in decoder.decode(block)]
        assert decoded == headers
    # the steady headers are indexed (one byte each); nothing per request, nor the token, entered the table
    table = [(name, value) for name, value in decoder.header_table.dynamic_entries]
    assert (b"apns-topic", b"com.example.app") in table
    assert not any(name in (b":path", b"apns-id", b"apns-expiration", b"authorization") for name, _ in table)
    assert len(encoder.encode(headers[:2] + headers[3:4] + headers[5:6])) == 4
