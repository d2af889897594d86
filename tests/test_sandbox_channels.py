"""Live Activity channels as a user runs them: ``goalhorn sandbox`` in its own process, pointed at by
the exports it prints; the channel client creates a channel, the control API says which phones watch
it, the APNs provider broadcasts on it, and the record holds one line per watching token."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from goalhorn.providers.apns import ApnsProvider
from goalhorn.providers.apns_channels import ApnsChannels
from goalhorn.settings import Settings
from tests.processes import Process, exports, free_port, processes, read_records
from tests.support.apns_sandbox import batch_of, channel_device, live_intent, token


async def test_a_broadcast_through_the_sandbox_process_is_recorded_once_per_watcher(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    control = f"http://127.0.0.1:{free_port()}"
    args = ["sandbox", "--dir", str(tmp_path / "sb"), "--record", str(record), "--fcm-port", "0"]
    args += ["--apns-port", "0", "--webhook-port", "0", "--control-port", control.rsplit(":", 1)[1]]
    with processes(tmp_path) as running:
        process = running["sandbox"] = Process("sandbox", args, dict(os.environ), tmp_path).start()
        process.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
        assert any(line.startswith("channels https://127.0.0.1:") for line in process.lines)
        env = {k.removeprefix("GOALHORN_").lower(): v for k, v in exports(process.lines).items() if "APNS" in k}
        settings = Settings.model_validate(env)
        assert settings.apns_channels_port not in (settings.apns_port, 2196)
        async with ApnsChannels(settings) as channels:
            channel_id = await channels.create()
            while "/" not in channel_id:  # base64: the control API takes an id with "/" in it too
                await channels.delete(channel_id)
                channel_id = await channels.create()
        watchers = {"tokens": [token(i) for i in range(3)]}
        async with aiohttp.ClientSession() as session:
            url = f"{control}/channels/{channel_id}/subscribers"
            async with session.post(url, json=watchers) as response:
                assert response.status == 200
                assert await response.json() == {"subscribers": 3}
            async with session.post(f"{control}/channels/bm9uZQ==/subscribers", json=watchers) as response:
                assert response.status == 404
            async with session.post(url, json={"tokens": "abc"}) as response:
                assert response.status == 400
        intent = live_intent("update")
        async with ApnsProvider(settings) as provider:
            (result,) = await provider.send(batch_of(intent, channel_device(channel_id)))
        assert result.outcome == "sent"
        async with asyncio.timeout(10), aiohttp.ClientSession() as session:
            while True:
                async with session.get(f"{control}/channels") as response:
                    state = await response.json()
                if state["delivered"] == 3:
                    break
                await asyncio.sleep(0.05)
        assert state["channels"] == {channel_id: {"message-storage-policy": 0, "subscribers": 3}}
        assert state["broadcasts"] == 1
        assert state["calls"]["create"] == state["calls"].get("delete", 0) + 1
    lines = read_records(record)
    assert sorted(line["token"] for line in lines) == [token(i) for i in range(3)]
    assert {(line["via"], line["channel"], line["intent_id"]) for line in lines} == {
        ("broadcast", channel_id, intent.intent_id)
    }
