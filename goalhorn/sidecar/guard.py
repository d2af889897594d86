"""What every API request goes through, in one pure ASGI middleware (one layer, not three: each
layer costs a few microseconds on every request):

- **metrics**: requests by route template, method and status, and the time to the response's start
  (``ApiMetrics``, one registry per app);
- **the deadline**: a request not answered in time gets 503 instead of holding a worker. Cached
  reads (the live-state routes, ``GET /v1/games...``) have 1 s, other requests 3 s, an import 60 s;
  streams, meant to stay open, have none. It covers the whole request (authentication, the rate
  limit, the route); a response already started is never cut;
- **the slow-send guard** of the streams: a client that stops reading fills the server's socket
  buffers and sending blocks; a stream whose send has blocked for ``SEND_TIMEOUT_S`` is ended there
  (the connection closed), so a stalled client holds no task, queue or buffers beyond that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
CACHED_READ_S = 1.0
DEFAULT_S = 3.0
IMPORT_S = 60.0
SEND_TIMEOUT_S = 10.0


def deadline_for(method: str, path: str) -> float | None:
    if path.endswith("/stream") or path == "/metrics":
        return None
    if path.startswith("/v1/users:import"):
        return IMPORT_S
    if method in ("GET", "HEAD") and path.startswith("/v1/games"):
        return CACHED_READ_S
    return DEFAULT_S


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "goalhorn_api_requests_total",
            "API requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "goalhorn_api_request_seconds",
            "Time to the start of the response, by route template",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3),
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:  # labels() looks its child up under a lock: once per combination here
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)


class SlowClient(Exception):
    """A stream's client stopped reading."""


class RequestGuard:
    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        responded = False

        def record(message: Message) -> None:
            nonlocal responded
            responded = True
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(route, scope["method"], message["status"], time.perf_counter() - started)

        limit = deadline_for(scope["method"], scope["path"])
        if limit is None:
            await self._stream(scope, receive, send, record)
            return
        try:
            async with asyncio.timeout(limit) as window:

                async def sending(message: Message) -> None:
                    if not responded and message["type"] == "http.response.start":
                        record(message)
                        window.reschedule(None)  # a response under way is not cut
                    await send(message)

                await self.app(scope, receive, sending)
        except TimeoutError:
            if responded:
                raise
            await self._past_deadline(send, limit)
            self.metrics.observe("deadline", scope["method"], 503, time.perf_counter() - started)

    async def _stream(self, scope: Scope, receive: Receive, send: Send, record: object) -> None:
        async def guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(message)  # type: ignore[operator]
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await send(message)
            except TimeoutError:
                raise SlowClient from None

        try:
            await self.app(scope, receive, guarded)
        except (SlowClient, BaseExceptionGroup) as exc:
            # FastAPI's SSE runs the stream in a task group: the guard's error comes wrapped, with the
            # task group's own fallout (a broken memory stream) beside it.
            if isinstance(exc, BaseExceptionGroup) and exc.subgroup(SlowClient) is None:
                raise
            log.info("dropped a stream client that stopped reading (%s)", scope.get("client"))

    @staticmethod
    async def _past_deadline(send: Send, limit: float) -> None:
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": f"not answered within the request deadline ({limit:g}s); try again",
            }
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
