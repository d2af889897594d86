"""``/v1/webhooks``: endpoints for bots, their secrets shown once, rotated with both signatures sent
through the window, another tenant's endpoints out of reach."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from goalhorn.models import Device
from goalhorn.providers.webhook import sign, signing_keys
from goalhorn.settings import Settings
from tests.support.api import Api, running_api

URL = "http://127.0.0.1:9/bot"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings.model_copy(update={"webhook_allowlist": "127.0.0.1"})) as api:
        yield api
        redis = api.app.state.services.redis
        async for key in redis.scan_iter(match=f"{settings.namespace}:*"):
            await redis.delete(key)


async def stored_device(api: Api, user: str, endpoint_id: str) -> Device:
    devices = await api.app.state.services.store.devices_of(user)
    return next(d for d in devices if d.device_id == endpoint_id)


def verifies(secret: str, device: Device) -> bool:
    """Whether a delivery signed as the webhook provider signs for ``device`` verifies with ``secret``."""
    body = b'{"type":"goal"}'
    timestamp = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(signing_keys(device.secret or ""), "msg_1", timestamp, body),
    }
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


async def test_an_endpoint_gets_a_secret_once_and_rotation_signs_with_both_for_the_window(api: Api) -> None:
    client = await api.as_tenant("acme")
    await client.put("/v1/users/bot1", json={})
    created = await client.post("/v1/webhooks", json={"user_id": "bot1", "url": URL})
    assert created.status_code == 201, created.text
    endpoint = created.json()
    first = endpoint["secret"]
    assert first.startswith("whsec_")
    assert len(signing_keys(first)[0]) == 32
    shown = (await client.get(f"/v1/webhooks/{endpoint['id']}")).json()
    assert "secret" not in shown
    assert first not in str((await client.get("/v1/webhooks")).json())
    assert first not in str((await client.get("/v1/users/bot1")).json())
    device = await stored_device(api, "acme/bot1", endpoint["id"])
    assert (device.platform, device.address) == ("webhook", URL)
    assert verifies(first, device)

    rotated = await client.post(f"/v1/webhooks/{endpoint['id']}/rotate")
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["secret"]
    assert second != first
    assert rotated.json()["old_secret_valid_until"] is not None
    device = await stored_device(api, "acme/bot1", endpoint["id"])
    assert verifies(second, device)
    assert verifies(first, device), "the old secret keeps verifying during the window"

    webhooks = api.app.state.services.webhooks
    assert await webhooks.expire_rotations(time.time()) == 0
    assert await webhooks.expire_rotations(time.time() + 86400 + 1) == 1
    device = await stored_device(api, "acme/bot1", endpoint["id"])
    assert verifies(second, device)
    assert not verifies(first, device)
    assert (await client.get(f"/v1/webhooks/{endpoint['id']}")).json()["old_secret_valid_until"] is None

    assert (await client.delete(f"/v1/webhooks/{endpoint['id']}")).status_code == 204
    assert await api.app.state.services.store.devices_of("acme/bot1") == []
    assert (await client.get(f"/v1/webhooks/{endpoint['id']}")).status_code == 404


async def test_endpoints_are_checked_and_kept_to_their_tenant(api: Api) -> None:
    acme = await api.as_tenant("acme")
    rival = await api.as_tenant("rival")
    await acme.put("/v1/users/bot1", json={})
    refused = await acme.post("/v1/webhooks", json={"user_id": "bot1", "url": "http://10.1.2.3/hook"})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "body.url"
    no_user = await rival.post("/v1/webhooks", json={"user_id": "bot1", "url": URL})
    assert no_user.status_code == 422
    assert no_user.json()["errors"][0]["field"] == "body.user_id"
    endpoint = (await acme.post("/v1/webhooks", json={"user_id": "bot1", "url": URL})).json()
    path = f"/v1/webhooks/{endpoint['id']}"
    for attempt in (rival.get(path), rival.post(f"{path}/rotate"), rival.delete(path)):
        answer = await attempt
        assert answer.status_code == 404
        assert URL not in answer.text
    assert (await rival.get("/v1/webhooks")).json() == []
    assert (await acme.get(path)).status_code == 200
    # deleting the user deletes its endpoints
    assert (await acme.delete("/v1/users/bot1")).status_code == 204
    assert (await acme.get(path)).status_code == 404
