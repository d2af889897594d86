"""Token hygiene for Live Activities: a token or channel the provider says is dead is forgotten in the
Live Activity registry (it is no stored device), unless the app registered a newer one meanwhile."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from goalhorn.keys import Keys
from goalhorn.liveactivities.registry import Channel, LiveRegistry
from goalhorn.providers.apns import ApnsProvider
from goalhorn.providers.apns_channels import ApnsChannels
from goalhorn.sandbox.apns_server import ApnsSandbox
from tests.conftest import make_settings
from tests.support.apns_sandbox import apns_settings, batch_of, channel_device, live_intent, token, token_device
from tests.test_send_path import harness

pytestmark = pytest.mark.real


async def test_dead_live_activity_tokens_and_channels_are_forgotten_unless_registered_again(tmp_path: Path) -> None:
    async with ApnsSandbox(tmp_path) as sandbox:
        base = apns_settings(sandbox)
        settings = make_settings("real", **{k: v for k, v in base.model_dump().items() if k.startswith("apns_")})
        async with ApnsChannels(settings) as channels:
            gone = await channels.create()
            await channels.delete(gone)  # APNs forgot it (say, deleted from Apple's console)
        dead, rotated, alive = token_device(1), token_device(2), token_device(3)
        sandbox.unregistered[dead.address] = int(time.time() * 1000)
        sandbox.unregistered[rotated.address] = int(time.time() * 1000)
        async with ApnsProvider(settings) as provider, harness(settings, provider) as h:
            registry = LiveRegistry(h.redis, Keys(settings.namespace), buckets=settings.preference_buckets)
            for device in (dead, rotated, alive):
                await registry.set_update_token(device.user_id, "g1", device.address)
            await registry.set_update_token(rotated.user_id, "g1", token(22))  # the app rotated it meanwhile
            await registry.keep_channel(Channel("g1", gone, 0, time.time()))

            await h.deliverer.process(batch_of(live_intent(), dead, rotated, alive, channel_device(gone)))
            snap = await h.snapshot()

            assert await registry.update_tokens("g1") == {"u2": token(22), "u3": token(3)}
            assert await registry.channel("g1") is None
    assert snap.get("delivery:apns:invalid_token") == 3
    assert snap.get("delivery:apns:sent") == 1
    assert snap.get("tokens_removed") == 2  # u1's token and the channel
    assert snap.get("tokens_kept_reregistered") == 1  # u2 rotated to a live token
