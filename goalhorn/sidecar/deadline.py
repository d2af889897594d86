"""A per-request deadline: a request not answered in time gets 503 instead of holding a worker.

Cached reads (the live-state routes, ``GET /v1/games...``) have 1 s, other requests 3 s, an import
60 s; streams, which are meant to stay open, have none. The deadline covers the whole request
(authentication, the rate limit, the route); a response already started is never cut.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CACHED_READ_S = 1.0
DEFAULT_S = 3.0
IMPORT_S = 60.0


def deadline_for(method: str, path: str) -> float | None:
    if path.endswith("/stream") or path == "/metrics":
        return None
    if path.startswith("/v1/users:import"):
        return IMPORT_S
    if method in ("GET", "HEAD") and path.startswith("/v1/games"):
        return CACHED_READ_S
    return DEFAULT_S


class DeadlineMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = deadline_for(scope.get("method", ""), scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        started = False
        try:
            async with asyncio.timeout(limit) as window:

                async def sending(message: Message) -> None:
                    nonlocal started
                    if not started:
                        started = True
                        window.reschedule(None)  # a response under way is not cut
                    await send(message)

                await self.app(scope, receive, sending)
        except TimeoutError:
            if started:
                raise
            body = json.dumps(
                {
                    "type": "about:blank",
                    "title": "Service Unavailable",
                    "status": 503,
                    "detail": f"not answered within the request deadline ({limit:g}s); try again",
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/problem+json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
