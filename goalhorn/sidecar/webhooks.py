"""Webhook endpoints for bots: a signed webhook device of one of the tenant's users, with a secret
goalhorn makes, shows once and rotates.

An endpoint is stored as a ``webhook`` device of its user (so the expander and the webhook provider
treat it like any other: the user's follows decide what it gets) plus a record in the tenant's
endpoint hash. Rotation makes a new secret and keeps the old one in the device's secret after it
(``"whsec_new whsec_old"``), so every delivery is signed with both, as Standard Webhooks specifies,
until the window ends; then the old one is dropped (by the API process's sweeper, or by the next
read of the endpoint, whichever comes first).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import cast

from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers.webhook import SECRET_PREFIX
from goalhorn.redis_client import Redis
from goalhorn.sidecar.tenants import stored_id


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    user_id: str
    url: str
    created_at: float
    rotated_at: float | None = None
    old_secret_until: float | None = None

    def record(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


class WebhookEndpoints:
    def __init__(self, redis: Redis, keys: Keys, store: PreferenceStore, *, rotation_window_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._store = store
        self._window_s = rotation_window_s

    async def create(self, tenant: str, user_id: str, url: str, locale: str) -> tuple[Endpoint, str]:
        """A new endpoint and its secret (returned once)."""
        secret = new_secret()
        endpoint = Endpoint(id="wh_" + secrets.token_hex(8), user_id=user_id, url=url, created_at=time.time())
        device = Device(
            platform="webhook",
            device_id=endpoint.id,
            user_id=stored_id(tenant, user_id),
            address=url,
            secret=secret,
            locale=locale,
        )
        await self._store.add_devices([device])
        await self._redis.hset(self._keys.tenant_webhooks(tenant), endpoint.id, endpoint.record())
        return endpoint, secret

    async def get(self, tenant: str, endpoint_id: str, now: float | None = None) -> Endpoint | None:
        raw = await self._redis.hget(self._keys.tenant_webhooks(tenant), endpoint_id)
        if raw is None:
            return None
        endpoint = Endpoint(**json.loads(raw))
        if endpoint.old_secret_until is not None and endpoint.old_secret_until <= (now or time.time()):
            endpoint = await self._end_rotation(tenant, endpoint)
        return endpoint

    async def list(self, tenant: str) -> list[Endpoint]:
        raw = await self._redis.hgetall(self._keys.tenant_webhooks(tenant))
        return sorted((Endpoint(**json.loads(v)) for v in raw.values()), key=lambda e: e.created_at)

    async def rotate(self, tenant: str, endpoint_id: str, now: float | None = None) -> tuple[Endpoint, str] | None:
        """A new secret for the endpoint, the current one still signing until the window ends."""
        endpoint = await self.get(tenant, endpoint_id, now)
        if endpoint is None:
            return None
        now = now or time.time()
        secret = new_secret()

        def rotated(device: Device) -> Device:
            current = (device.secret or "").split()[0]
            return device.model_copy(update={"secret": f"{secret} {current}"})

        if await self._store.change_device(stored_id(tenant, endpoint.user_id), endpoint.id, rotated) is None:
            return None
        updated = Endpoint(**{**asdict(endpoint), "rotated_at": now, "old_secret_until": now + self._window_s})
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(self._keys.tenant_webhooks(tenant), endpoint.id, updated.record())
        pipe.zadd(self._keys.webhook_rotations(), {f"{tenant}/{endpoint.id}": int((now + self._window_s) * 1000)})
        await pipe.execute()
        return updated, secret

    async def delete(self, tenant: str, endpoint_id: str) -> bool:
        endpoint = await self.get(tenant, endpoint_id)
        if endpoint is None:
            return False
        await self._redis.hdel(self._keys.tenant_webhooks(tenant), endpoint_id)
        await self._redis.zrem(self._keys.webhook_rotations(), f"{tenant}/{endpoint_id}")
        await self._store.remove_device(stored_id(tenant, endpoint.user_id), endpoint_id)
        return True

    async def expire_rotations(self, now: float | None = None) -> int:
        """End every rotation whose window is over; how many. Safe to run in every API process."""
        now = now or time.time()
        due = cast(
            list[bytes], await self._redis.zrangebyscore(self._keys.webhook_rotations(), "-inf", int(now * 1000))
        )
        ended = 0
        for member in due:
            tenant, _, endpoint_id = member.decode().partition("/")
            if await self.get(tenant, endpoint_id, now) is not None:
                ended += 1
            await self._redis.zrem(self._keys.webhook_rotations(), member)
        return ended

    async def _end_rotation(self, tenant: str, endpoint: Endpoint) -> Endpoint:
        def newest_only(device: Device) -> Device:
            return device.model_copy(update={"secret": (device.secret or "").split()[0]})

        await self._store.change_device(stored_id(tenant, endpoint.user_id), endpoint.id, newest_only)
        ended = Endpoint(**{**asdict(endpoint), "old_secret_until": None})
        await self._redis.hset(self._keys.tenant_webhooks(tenant), endpoint.id, ended.record())
        return ended
