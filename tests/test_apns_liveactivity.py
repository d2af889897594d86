"""Live Activities on the deliver side (issue 15) against the APNs sandbox over real HTTP/2 + TLS:
token sends and channel broadcasts through the APNs provider, the sandbox's validation rules (each
with a request that breaks only it), broadcast fan-out to subscribers, and the shared breaker circuit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from goalhorn.dispatch.breaker import State
from goalhorn.models import DeliveryBatch
from goalhorn.providers.apns import ApnsProvider
from goalhorn.providers.apns_channels import ApnsChannels, ApnsHttp, ProviderToken, read_key
from goalhorn.sandbox.apns_server import ApnsSandbox, Channel
from goalhorn.sandbox.faults import FaultWindow
from goalhorn.sandbox.recorder import PushRecorder
from tests.conftest import delete_namespace, make_settings
from tests.stages import deliver_all, delivery_stage
from tests.support.apns_sandbox import (
    apns_settings,
    batch_of,
    channel_device,
    live_aps,
    live_intent,
    token,
    token_device,
)
from tests.support.builders import make_intent

CHANNEL = "Z2FtZS1nMS1jaGFubmVs"  # base64, as APNs hands channel ids out


@pytest.fixture
async def sandbox(tmp_path: Path):
    async with ApnsSandbox(tmp_path) as server:
        server.recorder = PushRecorder(tmp_path / "record.jsonl")
        yield server
        server.recorder.close()


def recorded(sandbox: ApnsSandbox) -> list[dict[str, Any]]:
    assert sandbox.recorder is not None
    return [json.loads(line) for line in sandbox.recorder.path.read_text().splitlines()]


# --- the provider ---------------------------------------------------------------------------------


async def test_token_update_carries_the_intents_aps_unrendered(sandbox) -> None:
    """The template "liveactivity" does not exist in the catalog: rendering it would fail the send."""
    aps = live_aps("update")
    intent = live_intent(aps=aps)
    async with ApnsProvider(apns_settings(sandbox)) as provider:
        (result,) = await provider.send(batch_of(intent, token_device(1)))
        (tick,) = await provider.send(batch_of(live_intent(priority=3), token_device(2)))
    assert (result.outcome, tick.outcome) == ("sent", "sent")
    request, tick_request = sandbox.requests
    assert request.token == token(1)
    assert request.payload == {"aps": aps, "intent_id": intent.intent_id, "event_id": intent.event_id}
    assert request.headers["apns-push-type"] == "liveactivity"
    assert request.headers["apns-topic"] == sandbox.topic + ".push-type.liveactivity"
    assert request.headers["apns-priority"] == "10"
    assert request.headers["apns-collapse-id"] == "live:g1"
    assert tick_request.headers["apns-priority"] == "5"


async def test_push_to_start_names_the_games_channel(sandbox) -> None:
    intent = live_intent("start", input_push_channel=CHANNEL)
    update = live_intent("update", input_push_channel=CHANNEL)
    async with ApnsProvider(apns_settings(sandbox)) as provider:
        (started,) = await provider.send(batch_of(intent, token_device(1, "start")))
        (updated,) = await provider.send(batch_of(update, token_device(2)))
    assert (started.outcome, updated.outcome) == ("sent", "sent")
    start_aps, update_aps = (r.payload["aps"] for r in sandbox.requests)
    assert start_aps["input-push-channel"] == CHANNEL
    assert start_aps["attributes-type"] == "GameActivityAttributes"
    assert "input-push-channel" not in update_aps, "only a start subscribes the new activity"


async def test_broadcast_reaches_each_subscriber_once_and_is_recorded_per_token(sandbox) -> None:
    settings = apns_settings(sandbox)
    async with ApnsChannels(settings) as channels:
        channel_id = await channels.create()
    sandbox.subscribe(channel_id, [token(i) for i in range(5)])
    sandbox.unregistered[token(4)] = 1  # its app was deleted: APNs delivers it nothing
    intent = live_intent("update", input_push_channel=channel_id)
    async with ApnsProvider(settings) as provider:
        results = await provider.send(batch_of(intent, channel_device(channel_id), token_device(9)))
    assert [r.outcome for r in results] == ["sent", "sent"]
    assert results[0].provider_message_id  # the broadcast's apns-request-id
    (broadcast,) = sandbox.broadcasts
    assert broadcast.token == channel_id
    assert broadcast.headers["apns-channel-id"] == channel_id
    assert broadcast.headers["apns-push-type"] == "liveactivity"
    assert broadcast.headers["apns-expiration"] == "0"
    assert broadcast.headers["apns-priority"] == "10"
    assert broadcast.payload["aps"] == json.loads(intent.data["liveactivity"])
    await sandbox.fanout.drain(5)
    lines = recorded(sandbox)
    via = sorted(line["token"] for line in lines if line.get("via") == "broadcast")
    assert via == [token(i) for i in range(4)]
    assert all(line["intent_id"] == intent.intent_id for line in lines)
    assert {line.get("channel") for line in lines if "via" in line} == {channel_id}
    assert [line["token"] for line in lines if "via" not in line] == [token(9)]
    assert sandbox.fanned_out == {token(i): 1 for i in range(4)}


async def test_unknown_or_deleted_channel_is_an_invalid_token(sandbox) -> None:
    settings = apns_settings(sandbox)
    async with ApnsChannels(settings) as channels:
        channel_id = await channels.create()
        await channels.delete(channel_id)
    async with ApnsProvider(settings) as provider:
        gone, malformed = await provider.send(
            batch_of(live_intent(), channel_device(channel_id), channel_device("not base64!"))
        )
    assert (gone.outcome, gone.reason) == ("invalid_token", "ChannelNotRegistered")
    assert (malformed.outcome, malformed.reason) == ("invalid_token", "BadChannelId")
    assert not sandbox.broadcasts


async def test_broadcast_503_is_retryable_and_no_server_is_unanswered(sandbox) -> None:
    sandbox.channels[CHANNEL] = Channel(0, set())
    settings = apns_settings(sandbox)
    batch = batch_of(live_intent(), channel_device(CHANNEL))
    async with ApnsProvider(settings) as provider:
        sandbox.unavailable_for(5)
        (refused,) = await provider.send(batch)
        sandbox.unavailable_for(0)
        sandbox.fail_next(1, 429, "TooManyRequests")
        (throttled,) = await provider.send(batch)
    assert (refused.outcome, refused.retryable, refused.reason) == ("failed", True, "ServiceUnavailable")
    assert (throttled.outcome, throttled.retryable, throttled.reason) == ("failed", True, "TooManyRequests")
    await sandbox.stop()
    async with ApnsProvider(settings) as provider:
        (unanswered,) = await provider.send(batch)
    assert (unanswered.outcome, unanswered.retryable, unanswered.maybe_sent) == ("failed", True, False)
    assert (unanswered.reason or "").startswith("connection_error")


async def test_an_unanswered_broadcast_may_have_been_sent(sandbox) -> None:
    """A broadcast APNs holds past the deadline was written: it may be out, so its claim is kept."""
    sandbox.channels[CHANNEL] = Channel(0, set())
    sandbox.faults.open(FaultWindow.from_json({"mode": "hang", "seconds": 30, "prefix": CHANNEL}))
    settings = apns_settings(sandbox, apns_timeout_s=0.3)
    async with ApnsProvider(settings) as provider:
        (held,) = await provider.send(batch_of(live_intent(), channel_device(CHANNEL)))
    sandbox.faults.clear()
    assert (held.outcome, held.retryable, held.maybe_sent, held.reason) == ("failed", True, True, "timeout")


async def test_a_bad_liveactivity_document_is_a_message_error_not_a_crash(sandbox) -> None:
    intent = live_intent()
    intent = intent.model_copy(update={"data": {**intent.data, "liveactivity": "{not json"}})
    async with ApnsProvider(apns_settings(sandbox)) as provider:
        results = await provider.send(batch_of(intent, token_device(1), channel_device(CHANNEL)))
    assert all(r.outcome == "failed" and r.message_error and not r.retryable for r in results)
    assert (results[0].reason or "").startswith("invalid_liveactivity")
    assert not sandbox.requests
    assert not sandbox.broadcasts


async def test_broadcasts_count_against_the_apns_circuit_alerts_use(backend, sandbox) -> None:
    """Only the channel is refused (a 503 window on its id): its failure opens ``apns:<team>:<key>``,
    the circuit alerts are sent under, and once the window closes every push still goes out once."""
    sandbox.channels[CHANNEL] = Channel(0, {token(50)})
    base = apns_settings(sandbox)
    settings = make_settings(
        backend,
        **{k: v for k, v in base.model_dump().items() if k.startswith("apns_")},
        breaker_failure_threshold=1,
        breaker_open_s=0.2,
        retry_base_delay_s=0.05,
        retry_max_delay_s=0.2,
        delivery_max_attempts=30,
    )
    sandbox.faults.open(FaultWindow.from_json({"mode": "status", "status": 503, "seconds": 1.0, "prefix": CHANNEL}))
    provider = ApnsProvider(settings)
    alert = make_intent("i-alert")
    alerts = DeliveryBatch(batch_id="b-alert", platform="apns", intent=alert, devices=(token_device(1),))
    assert provider.circuit(channel_device(CHANNEL)) == provider.circuit(token_device(1))
    async with delivery_stage(settings, provider) as (stage, redis):
        try:
            batches = [batch_of(live_intent(), channel_device(CHANNEL)).encode(), alerts.encode()]
            counters = await deliver_all(stage, redis, batches, 60)
            assert stage._deliverer is not None
            breakers = stage._deliverer.breakers
        finally:
            await delete_namespace(redis, settings.namespace)
    circuit = f"apns:{sandbox.team_id}:{settings.apns_key_id}"
    assert breakers[circuit].opened_count >= 1
    assert breakers[circuit].state is State.CLOSED
    assert counters.get("retries") >= 1
    assert counters.get("delivery:apns:sent") == 2
    assert len(sandbox.broadcasts) == 1
    assert sandbox.received[token(1)] == 1


# --- the sandbox's rules, each broken alone ----------------------------------------------------------


@pytest.fixture
async def raw(sandbox):
    """Requests as written, over HTTP/2 + TLS with a trusted provider token: (path, headers, body) -> response."""
    settings = apns_settings(sandbox)
    token_ = ProviderToken(read_key(settings), settings.apns_key_id, sandbox.team_id)
    http = ApnsHttp(settings, sandbox.host, sandbox.port, token_)

    async def send(path: str, headers: dict[str, str], body: Any, method: str = "POST") -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await http.request(method, path, headers, content)

    yield send
    await http.aclose()


def device_headers(**changes: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "apns-push-type": "liveactivity",
        "apns-topic": "com.goalhorn.sandbox.push-type.liveactivity",
    }
    headers |= changes
    return {k: v for k, v in headers.items() if v is not None}


def without(aps: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in aps.items() if k != key}


DEVICE_RULES = [
    (
        "topic without the suffix",
        device_headers(**{"apns-topic": "com.goalhorn.sandbox"}),
        {"aps": live_aps()},
        400,
        "TopicDisallowed",
        "",
    ),
    ("event", device_headers(), {"aps": live_aps(event="begin")}, 400, "BadPayload", "aps.event"),
    ("timestamp", device_headers(), {"aps": live_aps(timestamp="now")}, 400, "BadPayload", "aps.timestamp"),
    (
        "content-state",
        device_headers(),
        {"aps": without(live_aps(), "content-state")},
        400,
        "BadPayload",
        "aps.content-state",
    ),
    ("stale-date", device_headers(), {"aps": live_aps(**{"stale-date": "soon"})}, 400, "BadPayload", "aps.stale-date"),
    (
        "attributes-type on start",
        device_headers(),
        {"aps": without(live_aps("start"), "attributes-type")},
        400,
        "BadPayload",
        "aps.attributes-type",
    ),
    (
        "attributes on start",
        device_headers(),
        {"aps": without(live_aps("start"), "attributes")},
        400,
        "BadPayload",
        "aps.attributes ",
    ),
    ("4 KB", device_headers(), {"aps": live_aps(), "pad": "x" * 4000}, 413, "PayloadTooLarge", ""),
]


@pytest.mark.parametrize(
    ("rule", "headers", "body", "status", "reason", "detail"), DEVICE_RULES, ids=[r[0] for r in DEVICE_RULES]
)
async def test_device_live_activity_rules(raw, rule, headers, body, status, reason, detail) -> None:
    path = f"/3/device/{token(1)}"
    assert (await raw(path, device_headers(), {"aps": live_aps()})).status_code == 200, "the valid request passes"
    response = await raw(path, headers, body)
    assert response.status_code == status
    assert response.json()["reason"] == reason
    assert detail in response.json().get("detail", "")


async def test_device_rules_accept_every_event_and_an_end_without_state(raw) -> None:
    path = f"/3/device/{token(1)}"
    for aps in (live_aps("start"), live_aps("update"), live_aps("end"), without(live_aps("end"), "content-state")):
        assert (await raw(path, device_headers(), {"aps": aps})).status_code == 200, aps["event"]


def broadcast_headers(**changes: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "apns-push-type": "liveactivity",
        "apns-channel-id": CHANNEL,
        "apns-expiration": "0",
        "apns-priority": "10",
    }
    headers |= changes
    return {k: v for k, v in headers.items() if v is not None}


BROADCAST = "/4/broadcasts/apps/com.goalhorn.sandbox"
BROADCAST_RULES = [
    (
        "push type missing",
        BROADCAST,
        broadcast_headers(**{"apns-push-type": None}),
        {"aps": live_aps()},
        400,
        "MissingPushType",
        "",
    ),
    (
        "push type alert",
        BROADCAST,
        broadcast_headers(**{"apns-push-type": "alert"}),
        {"aps": live_aps()},
        400,
        "InvalidPushType",
        "",
    ),
    (
        "channel id missing",
        BROADCAST,
        broadcast_headers(**{"apns-channel-id": None}),
        {"aps": live_aps()},
        400,
        "MissingChannelId",
        "",
    ),
    (
        "channel id malformed",
        BROADCAST,
        broadcast_headers(**{"apns-channel-id": "no such!"}),
        {"aps": live_aps()},
        400,
        "BadChannelId",
        "",
    ),
    (
        "channel unknown",
        BROADCAST,
        broadcast_headers(**{"apns-channel-id": "b3RoZXItY2hhbm5lbA=="}),
        {"aps": live_aps()},
        400,
        "ChannelNotRegistered",
        "",
    ),
    (
        "expiration on a no-storage channel",
        BROADCAST,
        broadcast_headers(**{"apns-expiration": "1800000000"}),
        {"aps": live_aps()},
        400,
        "BadExpirationDate",
        "No Message Storage",
    ),
    ("priority", BROADCAST, broadcast_headers(**{"apns-priority": "7"}), {"aps": live_aps()}, 400, "BadPriority", ""),
    ("event", BROADCAST, broadcast_headers(), {"aps": live_aps(event="begin")}, 400, "BadPayload", "aps.event"),
    (
        "start",
        BROADCAST,
        broadcast_headers(),
        {"aps": live_aps("start")},
        400,
        "BadPayload",
        "push-to-start tokens",
    ),
    (
        "content-state",
        BROADCAST,
        broadcast_headers(),
        {"aps": without(live_aps(), "content-state")},
        400,
        "BadPayload",
        "aps.content-state",
    ),
    ("5 KB", BROADCAST, broadcast_headers(), {"aps": live_aps(), "pad": "x" * 5100}, 413, "PayloadTooLarge", ""),
    (
        "another app's bundle",
        "/4/broadcasts/apps/com.other.app",
        broadcast_headers(),
        {"aps": live_aps()},
        400,
        "TopicDisallowed",
        "",
    ),
]


@pytest.mark.parametrize(
    ("rule", "path", "headers", "body", "status", "reason", "detail"),
    BROADCAST_RULES,
    ids=[r[0] for r in BROADCAST_RULES],
)
async def test_broadcast_rules(sandbox, raw, rule, path, headers, body, status, reason, detail) -> None:
    sandbox.channels[CHANNEL] = Channel(0, set())
    assert (await raw(BROADCAST, broadcast_headers(), {"aps": live_aps()})).status_code == 200, "valid passes"
    response = await raw(path, headers, body)
    assert response.status_code == status
    assert response.json()["reason"] == reason
    assert detail in response.json().get("detail", "")
    assert len(sandbox.broadcasts) == 1, "only the valid one was accepted"


async def test_broadcast_limits_are_a_broadcasts(sandbox, raw) -> None:
    """5 KB (not the token's 4 KB) is the cap, and a Most Recent Message channel takes an expiration."""
    sandbox.channels[CHANNEL] = Channel(0, set())
    sandbox.channels["c3RvcmFnZS1jaGFubmVs"] = Channel(1, set())
    big = {"aps": live_aps(), "pad": "x" * 4500}
    assert (await raw(BROADCAST, broadcast_headers(), big)).status_code == 200
    later = broadcast_headers(**{"apns-channel-id": "c3RvcmFnZS1jaGFubmVs", "apns-expiration": "1800000000"})
    assert (await raw(BROADCAST, later, {"aps": live_aps()})).status_code == 200
    assert (await raw(BROADCAST, broadcast_headers(), {"aps": live_aps()}, method="GET")).status_code == 405
