"""The API's Prometheus metrics: requests by route template, method and status, and their latency.

Each app has its own registry (two apps in one test process do not collide); a pure ASGI middleware
counts, so a streaming response is neither buffered nor delayed.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = scope.get("route")
                name = getattr(route, "path", "unmatched")
                self.metrics.latency.labels(name).observe(time.perf_counter() - started)
                self.metrics.requests.labels(name, scope["method"], str(status)).inc()
            await send(message)

        await self.app(scope, receive, sending)
