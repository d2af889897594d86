"""``/healthz``, ``/readyz`` and Prometheus ``/metrics`` of one process, on ``--metrics-port``.

``/healthz`` answers while the process's event loop runs; ``/readyz`` answers 200 only while every
stage it runs is taking work and Redis answers, and 503 with the reasons otherwise (before start,
while stopping, when a feed client died, when Redis is gone).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from goalhorn.errors import ConfigError

Readiness = Callable[[], Awaitable[list[str]]]
"""The reasons the process is not ready; empty when it is."""


class HealthServer:
    def __init__(self, host: str, port: int, readiness: Readiness) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the OS chose for port 0)."""
        assert self._runner is not None
        site = next(iter(self._runner.sites))
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:  # a port in use, an address not of this machine: what to fix, not a traceback
            await self.aclose()
            reason = exc.strerror or str(exc)
            raise ConfigError(f"--metrics-port: cannot listen on {self._host}:{self._port}: {reason}") from exc

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(2.0):
                reasons = await self._readiness()
        except TimeoutError:
            reasons = ["readiness check timed out"]
        status = 200 if not reasons else 503
        body = {"status": "ready" if not reasons else "not ready", "reasons": reasons}
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        payload = await asyncio.to_thread(generate_latest, REGISTRY)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})
