"""``goalhorn sandbox --control-port``: fault windows opened over HTTP from another process, per
provider and per target prefix, and the count of what each provider received and answered."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from goalhorn.ops.delivery import _one_off_intent, send_one
from goalhorn.sandbox.servers import SandboxServers
from tests.processes import Process, clean_env, processes

FCM = "fcm-" + "Ab9_-:" * 24
APNS = "ab" * 32


@pytest.fixture
async def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    async with SandboxServers(tmp_path / "sandbox", record=tmp_path / "pushes.jsonl", control_port=0) as running:
        for name, value in running.settings_env().items():
            monkeypatch.setenv(name, value)
        yield running


async def control(servers: SandboxServers, method: str, path: str, body: object = None) -> tuple[int, dict]:
    assert servers.control is not None
    async with aiohttp.ClientSession() as session, session.request(method, servers.control.url + path, json=body) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else {})


async def test_a_503_window_refuses_every_push_of_its_provider_only_and_counts_them(servers: SandboxServers) -> None:
    intent = _one_off_intent("GOAL", "1-0", {})
    status, _ = await control(servers, "POST", "/faults/fcm", {"mode": "status", "status": 503, "seconds": 30})
    assert status == 201
    assert (await send_one("fcm", FCM, None, intent)).outcome == "failed"
    assert (await send_one("fcm", "x" + FCM, None, intent)).outcome == "failed"
    assert (await send_one("apns", APNS, None, intent)).outcome == "sent"
    _, counts = await control(servers, "GET", "/counts")
    assert counts["fcm"]["received"] == 2
    assert counts["fcm"]["answered"] == {"503": 2}
    assert counts["apns"]["answered"] == {"200": 1}
    assert counts["fcm"]["open_windows"] == 1
    assert (await control(servers, "DELETE", "/faults"))[0] == 204
    assert (await send_one("fcm", FCM, None, intent)).outcome == "sent"
    assert servers.recorder is not None
    assert servers.recorder.recorded == 2, "refused pushes are not recorded"


async def test_a_window_ends_by_itself(servers: SandboxServers) -> None:
    intent = _one_off_intent("GOAL", "1-0", {})
    await control(servers, "POST", "/faults/apns", {"mode": "status", "status": 500, "seconds": 0.3})
    assert (await send_one("apns", APNS, None, intent)).outcome == "failed"
    await asyncio.sleep(0.4)
    assert (await send_one("apns", APNS, None, intent)).outcome == "sent"


async def test_a_hang_window_holds_only_the_webhook_endpoints_of_its_prefix(servers: SandboxServers) -> None:
    intent = _one_off_intent("GOAL", "1-0", {})
    await control(servers, "POST", "/faults/webhook", {"mode": "hang", "seconds": 30, "prefix": "slow-"})
    slow = asyncio.ensure_future(
        send_one("webhook", servers.webhooks.endpoint_url("slow-1"), servers.webhook_secret, intent)
    )
    fast = await send_one("webhook", servers.webhooks.endpoint_url("fast-1"), servers.webhook_secret, intent)
    assert fast.outcome == "sent"
    async with asyncio.timeout(5):
        while servers.webhooks.faults.hanging != 1:
            await asyncio.sleep(0.02)
    assert not slow.done()
    _, counts = await control(servers, "GET", "/counts")
    assert counts["webhook"]["hanging"] == 1
    assert counts["webhook"]["answered"] == {"204": 1}
    slow.cancel()


async def test_a_quota_window_accepts_its_rate_and_answers_429_with_retry_after_beyond(
    servers: SandboxServers,
) -> None:
    intent = _one_off_intent("GOAL", "1-0", {})
    await control(servers, "POST", "/faults/fcm", {"mode": "quota", "quota_per_s": 5, "seconds": 30})
    while time.time() % 1 > 0.5:  # all 12 sends inside one wall-clock second
        await asyncio.sleep(0.05)
    results = await asyncio.gather(*(send_one("fcm", f"{n}{FCM}", None, intent) for n in range(12)))
    assert sorted(r.outcome for r in results) == ["failed"] * 7 + ["sent"] * 5
    refused = [r for r in results if r.outcome == "failed"]
    assert all(r.retryable for r in refused)
    assert servers.fcm.faults.answered[429] == 7


async def test_unregistered_tokens_and_gone_endpoints_from_the_control(servers: SandboxServers) -> None:
    intent = _one_off_intent("GOAL", "1-0", {})
    for provider, tokens in (("fcm", [FCM]), ("apns", [APNS]), ("webhook", ["bye"])):
        status, body = await control(servers, "POST", f"/unregistered/{provider}", {"tokens": tokens})
        assert (status, body) == (200, {"unregistered": 1})
    assert (await send_one("fcm", FCM, None, intent)).outcome == "invalid_token"
    assert (await send_one("apns", APNS, None, intent)).outcome == "invalid_token"
    gone = await send_one("webhook", servers.webhooks.endpoint_url("bye"), servers.webhook_secret, intent)
    assert gone.outcome != "sent"


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/faults/sms", {"seconds": 1}, "provider"),
        ("/faults/fcm", {"mode": "melt", "seconds": 1}, "mode"),
        ("/faults/fcm", {"seconds": 0}, "seconds"),
        ("/faults/fcm", {"seconds": 1, "status": 200}, "status"),
        ("/faults/fcm", {"mode": "quota", "seconds": 1}, "quota_per_s"),
        ("/faults/fcm", [1], "object"),
        ("/unregistered/apns", {"tokens": "abc"}, "tokens"),
    ],
)
async def test_bad_control_requests_are_400_naming_the_field(
    servers: SandboxServers, path: str, body: object, error: str
) -> None:
    status, answer = await control(servers, "POST", path, body)
    assert status == 400
    assert error in answer["error"]
    assert servers.fcm.faults.windows == []


def test_the_command_prints_its_control_url_and_answers_counts(tmp_path: Path) -> None:
    with processes(tmp_path) as running:
        args = ["sandbox", "--dir", str(tmp_path / "s"), "--fcm-port", "0", "--apns-port", "0", "--webhook-port", "0"]
        sandbox = Process("sandbox", [*args, "--control-port", "0"], clean_env(), tmp_path)
        running["sandbox"] = sandbox.start()
        url = sandbox.wait_for(r"^control\s+(http://127\.0\.0\.1:\d+)/counts$").group(1)

        async def counts() -> dict:
            async with aiohttp.ClientSession() as session, session.get(url + "/counts") as response:
                return await response.json()

        assert asyncio.run(counts())["fcm"] == {"received": 0, "answered": {}, "hanging": 0, "open_windows": 0}
        assert sandbox.terminate(30) == 0
