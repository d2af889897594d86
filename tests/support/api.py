"""The sidecar in-process: an app over a test's settings, an httpx client on it, and keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI

from goalhorn.settings import Settings
from goalhorn.sidecar.apikeys import Scope, Tier
from goalhorn.sidecar.app import create_app

SECRET = "test-server-secret-of-at-least-32-characters"


def api_settings(settings: Settings, **overrides: object) -> Settings:
    return settings.model_copy(update={"api_key_secret": SECRET, **overrides})


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient

    async def key(
        self, tenant: str = "acme", tier: Tier = "enterprise", scopes: tuple[Scope, ...] = ("read", "write")
    ) -> str:
        key, _ = await self.app.state.services.api_keys.create(tenant, tier, scopes)
        return str(key)

    async def as_tenant(self, tenant: str = "acme", **kwargs: object) -> httpx.AsyncClient:
        """A client sending a new key of ``tenant``."""
        key = await self.key(tenant, **kwargs)  # type: ignore[arg-type]
        return httpx.AsyncClient(
            transport=self.client._transport,
            base_url="http://api",
            headers={"Authorization": f"Bearer {key}"},
        )


@asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[Api]:
    """The app over ``settings`` (with a key secret), in-process; its services closed after."""
    from pydantic import SecretStr

    if settings.api_key_secret is None:
        settings = settings.model_copy(update={"api_key_secret": SecretStr(SECRET)})
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(app, client)
    finally:
        await app.state.services.aclose()
