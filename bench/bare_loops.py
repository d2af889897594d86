"""The bare client loops bench e2e compares goalhorn with: what a push costs with nothing around it.

One asyncio process sends an audience's pushes straight to the sandbox, each provider's share in its
own loop, all three at once: aiohttp POSTs to FCM v1 (a bearer token fetched once, 100 in flight,
goalhorn's default ``GOALHORN_FCM_CONCURRENCY``), aioapns to APNs (500 in flight over
``GOALHORN_APNS_MAX_CONNECTIONS`` connections) and signed aiohttp POSTs to webhooks (200 in flight).
Payloads are the size goalhorn sends (title, body, the intent's data). No Redis, no queue, no markers.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from bench.deployment import Audience
from goalhorn.catalog import default_catalog
from goalhorn.models import Intent
from goalhorn.providers.webhook import sign, signing_keys, webhook_body, webhook_id
from goalhorn.settings import Settings

FCM_IN_FLIGHT = 100
APNS_IN_FLIGHT = 500
WEBHOOK_IN_FLIGHT = 200


@dataclass(frozen=True, slots=True)
class LoopFigures:
    pushes: int
    wall_s: float
    cpu_s: float
    """CPU of this process (every thread) while the loops ran."""

    @property
    def rate(self) -> float:
        return self.pushes / self.wall_s

    @property
    def cpu_ms_per_push(self) -> float:
        return self.cpu_s * 1000 / self.pushes


async def fcm_token(session: aiohttp.ClientSession, account_file: str) -> str:
    """An OAuth bearer token for the sandbox's FCM: a signed JWT assertion, as google-auth sends it."""
    account = json.loads(await asyncio.to_thread(Path(account_file).read_text))
    now = int(time.time())
    claims = {
        "iss": account["client_email"],
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": account["token_uri"],
        "iat": now,
        "exp": now + 3600,
    }
    assertion = jwt.encode(claims, account["private_key"], "RS256", headers={"kid": account["private_key_id"]})
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    async with session.post(account["token_uri"], data=form) as response:
        response.raise_for_status()
        return str((await response.json())["access_token"])


def _fcm_body(intent: Intent, token: str, title: str, body: str) -> bytes:
    message: dict[str, Any] = {
        "token": token,
        "notification": {"title": title, "body": body},
        "data": {**intent.data, "intent_id": intent.intent_id, "event_id": intent.event_id, "kind": str(intent.kind)},
        "android": {"priority": "high", "ttl": "300s", "collapse_key": intent.collapse_key or ""},
        "apns": {"headers": {"apns-priority": "10", "apns-expiration": str(int(intent.expires_at.timestamp()))}},
    }
    return json.dumps({"message": message}, separators=(",", ":")).encode()


async def run_bare_loops(settings: Settings, audience: Audience, intent: Intent, secret: str) -> LoopFigures:
    """Send ``intent`` to every device of ``audience`` with the bare loops; checks each was accepted."""
    from aioapns import APNs, NotificationRequest, PushType
    from aioapns.connection import APNsProductionClientProtocol

    rendered = default_catalog().render(intent, "en")
    by_platform: dict[str, list[int]] = {"fcm": [], "apns": [], "webhook": []}
    for i in range(audience.size):
        by_platform[audience.platform(i)].append(i)

    assert settings.fcm_credentials_file is not None
    assert settings.apns_key_file is not None
    apns = APNs(
        key=await asyncio.to_thread(Path(settings.apns_key_file).read_text),
        key_id=settings.apns_key_id,
        team_id=settings.apns_team_id,
        topic=settings.apns_topic,
        max_connections=settings.apns_max_connections,
        ssl_context=ssl.create_default_context(cafile=settings.apns_ca_file),
    )
    endpoint = {"APNS_SERVER": settings.apns_host, "APNS_PORT": settings.apns_port}
    apns.pool.protocol_class = type("BareEndpoint", (APNsProductionClientProtocol,), endpoint)
    apns_message = {
        "aps": {"alert": {"title": rendered.title, "body": rendered.body}, "sound": "default"},
        "intent_id": intent.intent_id,
        "event_id": intent.event_id,
    }
    hook_body = webhook_body(intent, rendered)
    keys = signing_keys(secret)
    project = json.loads(await asyncio.to_thread(Path(settings.fcm_credentials_file).read_text))["project_id"]
    fcm_url = f"{settings.fcm_base_url}/v1/projects/{project}/messages:send"

    fcm_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=FCM_IN_FLIGHT))
    hook_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=WEBHOOK_IN_FLIGHT))
    try:
        token = await fcm_token(fcm_session, settings.fcm_credentials_file)
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}

        async def fcm_loop(indexes: list[int]) -> None:
            async def one(i: int) -> None:
                data = _fcm_body(intent, audience.address(i), rendered.title, rendered.body)
                async with fcm_session.post(fcm_url, data=data, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"bare FCM loop: HTTP {response.status}")

            await _bounded(FCM_IN_FLIGHT, one, indexes)

        async def apns_loop(indexes: list[int]) -> None:
            async def one(i: int) -> None:
                request = NotificationRequest(audience.address(i), apns_message, priority=10, push_type=PushType.ALERT)
                result = await apns.send_notification(request)
                if not result.is_successful:
                    raise RuntimeError(f"bare aioapns loop: {result.description}")

            await _bounded(APNS_IN_FLIGHT, one, indexes)

        async def webhook_loop(indexes: list[int]) -> None:
            async def one(i: int) -> None:
                msg_id, stamp = webhook_id(intent.intent_id, f"d{i}"), int(time.time())
                signed = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp)}
                signed["webhook-signature"] = sign(keys, msg_id, stamp, hook_body)
                async with hook_session.post(audience.address(i), data=hook_body, headers=signed) as response:
                    await response.read()
                    if response.status != 204:
                        raise RuntimeError(f"bare webhook loop: HTTP {response.status}")

            await _bounded(WEBHOOK_IN_FLIGHT, one, indexes)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(
            fcm_loop(by_platform["fcm"]), apns_loop(by_platform["apns"]), webhook_loop(by_platform["webhook"])
        )
        return LoopFigures(audience.size, time.perf_counter() - wall, time.process_time() - cpu)
    finally:
        await fcm_session.close()
        await hook_session.close()
        # aioapns closes a connection by a graceful TLS shutdown that needs the loop to keep running for
        # the sandbox's answer; the caller's loop may end first, leaking the socket (as ApnsProvider.aclose).
        for connection in list(apns.pool.connections):
            if connection.transport is not None:
                connection.transport.abort()
        apns.pool.close()
        await asyncio.sleep(0)  # the aborted transports release their sockets on the next turn


async def _bounded(limit: int, one: Any, indexes: list[int]) -> None:
    """``one(i)`` for every index, ``limit`` at a time, by ``limit`` workers (no task per push held)."""
    queue = iter(indexes)

    async def worker() -> None:
        for i in queue:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(min(limit, len(indexes)) or 1)))
