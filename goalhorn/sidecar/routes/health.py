"""``/healthz``, ``/readyz`` (Redis and RabbitMQ reachable) and Prometheus ``/metrics``: no key needed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from goalhorn.errors import ConfigError
from goalhorn.sidecar.deps import Services

Check = Callable[[], Awaitable[None]]
"""A service check: returns when the service can be used, raises ConfigError (saying why) otherwise."""

router = APIRouter(tags=["health"])
CHECK_EVERY_S = 5.0
CHECK_TIMEOUT_S = 2.0


class Readiness:
    """Why the process is not ready (empty when it is): Redis, pinged per call, and the composition
    root's other checks (RabbitMQ), which dial a connection, so at most every 5 s."""

    def __init__(self, svc: Services, checks: dict[str, Check] | None = None) -> None:
        self._svc = svc
        self._checks = checks or {}
        self._checked = 0.0
        self._problems: list[str] = []

    async def reasons(self) -> list[str]:
        reasons = []
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._svc.redis.ping()
        except Exception as exc:  # any failure means "not ready", with why
            reasons.append(f"Redis does not answer ({type(exc).__name__})")
        if time.monotonic() - self._checked >= CHECK_EVERY_S:
            self._checked = time.monotonic()
            problems = []
            for name, check in self._checks.items():
                try:
                    async with asyncio.timeout(CHECK_TIMEOUT_S):
                        await check()
                except ConfigError as exc:
                    problems.append(f"{name}: {exc}")
                except TimeoutError:
                    problems.append(f"{name}: no answer within {CHECK_TIMEOUT_S:g}s")
            self._problems = problems
        return reasons + self._problems


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready, with the reasons"}})
async def readyz(request: Request) -> JSONResponse:
    reasons = await request.app.state.readiness.reasons()
    body = {"status": "ready" if not reasons else "not ready", "reasons": reasons}
    return JSONResponse(body, status_code=200 if not reasons else 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    payload = generate_latest(request.app.state.metrics.registry)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
