"""``create_app(settings)``: the sidecar's FastAPI app, its services built from settings.

Routes are grouped per noun in ``goalhorn.sidecar.routes``; errors are problem details
(``problems.py``); every route but health needs an API key (``deps.caller``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from goalhorn import __version__
from goalhorn.settings import Settings
from goalhorn.sidecar import problems
from goalhorn.sidecar.deps import Services, component_schemas
from goalhorn.sidecar.guard import ApiMetrics, RequestGuard
from goalhorn.sidecar.routes import admin, games, health, imports, live_activities, streams, users, webhooks
from goalhorn.sidecar.routes.health import Check, Readiness

BODY_MODELS = (
    *users.BODY_MODELS,
    *webhooks.BODY_MODELS,
    *admin.BODY_MODELS,
    *live_activities.BODY_MODELS,
    problems.ProblemDetails,
)


def create_app(settings: Settings, svc: Services | None = None, *, checks: dict[str, Check] | None = None) -> FastAPI:
    """The API over ``settings``' Redis (``svc`` replaces the services built from them; the caller
    then closes them); ``/readyz`` also runs ``checks`` (name -> check). ConfigError when
    GOALHORN_API_KEY_SECRET is missing."""
    services = svc if svc is not None else Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if svc is None:
                await services.aclose()

    app = FastAPI(
        title="goalhorn API",
        version=__version__,
        description="Subscribers, devices, follows and live game state for apps and bots.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.readiness = Readiness(services, checks)
    app.state.metrics = ApiMetrics()
    app.state.game_cache = games.GameCache()
    problems.install(app)
    app.include_router(health.router)
    routers = (games, imports, users, live_activities, webhooks, streams, admin)  # the hottest first: fewer tried
    for module in routers:
        app.include_router(module.router, responses=problems.PROBLEM_RESPONSES)
    app.add_middleware(games.CachedGameReads, services=services, cache=app.state.game_cache)
    app.add_middleware(RequestGuard, metrics=app.state.metrics)  # added last: the outer layer

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(component_schemas(BODY_MODELS))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
