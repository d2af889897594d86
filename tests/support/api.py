"""The sidecar in-process: an app over a test's settings, an httpx client on it, and keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
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


@asynccontextmanager
async def serving_api(settings: Settings) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app over ``settings`` served by a real uvicorn on a free port of 127.0.0.1, in this
    event loop; yields the app and its base URL."""
    import asyncio

    import uvicorn
    from pydantic import SecretStr

    if settings.api_key_secret is None:
        settings = settings.model_copy(update={"api_key_secret": SecretStr(SECRET)})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    server.capture_signals = _no_signals  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        await task
        await app.state.services.aclose()


@contextmanager
def _no_signals() -> Iterator[None]:
    yield
