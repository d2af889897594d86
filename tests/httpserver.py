"""Local aiohttp servers the pollers and stream clients are tested against (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on a free port of 127.0.0.1 and yield its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


Step = Callable[[web.Request], Awaitable[web.StreamResponse]]


def body(data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Step:
    async def step(request: web.Request) -> web.StreamResponse:
        return web.Response(body=data, status=status, headers=headers, content_type="application/json")

    return step


def chunked(data: bytes, size: int = 4096, headers: dict[str, str] | None = None) -> Step:
    """Send ``data`` with chunked transfer encoding (no Content-Length), ``size`` bytes per chunk."""

    async def step(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", **(headers or {})})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the client stopped reading (a body over its cap)
            for start in range(0, len(data), size):
                await response.write(data[start : start + size])
                await asyncio.sleep(0)
            await response.write_eof()
        return response

    return step


def stall(seconds: float) -> Step:
    async def step(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(body=b"{}")

    return step


def truncated(data: bytes) -> Step:
    """Promise the whole body in Content-Length, send half, and drop the connection."""

    async def step(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    return step


def chunked_truncated(data: bytes, size: int = 4096) -> Step:
    """Send half of ``data`` in chunks, then drop the connection before the last chunk."""

    async def step(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(data) // 2, size):
            await response.write(data[start : start + size])
        assert request.transport is not None
        request.transport.close()
        return response

    return step


class Script:
    """Answers the n-th request with the n-th step (the last step repeats); records the paths."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        step = self.steps[min(len(self.paths), len(self.steps) - 1)]
        self.paths.append(request.path)
        return await step(request)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app
