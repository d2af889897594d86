"""Android live updates (issue 15): a Live Activity intent goes to FCM as a data-only message keyed
by the match's activity id, against the FCM sandbox; alerts keep their notification message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from goalhorn.models import DeliveryBatch, Device
from goalhorn.providers.fcm import FcmProvider
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.settings import Settings
from tests.support.apns_sandbox import batch_of, live_intent
from tests.support.builders import make_intent


@pytest.fixture
async def sandbox():
    async with FcmSandbox() as server:
        yield server


@pytest.fixture
def fcm_settings(sandbox: FcmSandbox, tmp_path: Path) -> Settings:
    return Settings(fcm_credentials_file=str(sandbox.service_account(tmp_path / "sa.json")), fcm_base_url=sandbox.url)


def android(i: int) -> Device:
    return Device(device_id=f"la:android:u{i}:g1", user_id=f"u{i}", platform="fcm", address=f"tok-{i}", locale="de")


async def test_live_update_is_data_only_with_the_activity_as_collapse_key(sandbox, fcm_settings) -> None:
    goal = live_intent("update", priority=9)
    tick = live_intent("update", priority=3)
    async with FcmProvider(fcm_settings) as provider:
        sent = await provider.send(batch_of(goal, android(1), android(2)))
        ticked = await provider.send(batch_of(tick, android(3)))
        alerted = await provider.send(
            DeliveryBatch(batch_id="b-alert", platform="fcm", intent=make_intent("i-alert"), devices=(android(4),))
        )
    assert [r.outcome for r in (*sent, *ticked, *alerted)] == ["sent"] * 4
    first, _, tick_message, alert = sandbox.messages
    assert "notification" not in first, "the app renders the live update itself"
    assert first["data"] == {
        **json.loads(goal.data["live_update"]),
        "intent_id": goal.intent_id,
        "event_id": goal.event_id,
    }
    assert first["android"]["priority"] == "high"
    assert first["android"]["collapse_key"] == "g1"
    assert 0 < float(first["android"]["ttl"][:-1]) <= 600
    assert tick_message["android"]["priority"] == "normal"
    assert alert["notification"]["title"] == "GOAL! NYC", "alerts are unchanged"


async def test_a_bad_live_update_is_a_message_error(sandbox, fcm_settings) -> None:
    intent = live_intent()
    for bad in ("{not json", '{"home_score": 1}', "[]"):
        broken = intent.model_copy(update={"data": {**intent.data, "live_update": bad}})
        async with FcmProvider(fcm_settings) as provider:
            (result,) = await provider.send(batch_of(broken, android(1)))
        assert (result.outcome, result.message_error, result.retryable) == ("failed", True, False), bad
    assert not sandbox.messages
