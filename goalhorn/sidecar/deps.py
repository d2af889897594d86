"""What the routes depend on: the process's services (built once by ``create_app``) and the caller.

Every route but health declares the scope it needs with ``Depends(caller("read"))`` or
``caller("write")``; the dependency checks the ``Authorization: Bearer`` key (401 with
``WWW-Authenticate`` when it is missing, malformed, unknown or revoked; 403 when its scopes lack the
one needed), that no kill switch covers the route (503), and the key's rate limit (429 with
``Retry-After``), and hands the route the key with its tenant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from goalhorn.ingest.live import LiveState
from goalhorn.keys import Keys
from goalhorn.liveactivities.registry import LiveRegistry
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers.ssrf import AddressPolicy
from goalhorn.redis_client import Redis, make_redis
from goalhorn.settings import Settings
from goalhorn.sidecar.apikeys import ApiKey, KeyStore, Scope
from goalhorn.sidecar.problems import Invalid, Problem, invalid
from goalhorn.sidecar.ratelimit import RateLimiter, Verdict
from goalhorn.sidecar.streams import StreamHub
from goalhorn.sidecar.switches import KillSwitches
from goalhorn.sidecar.tenants import TenantUsers
from goalhorn.sidecar.webhooks import WebhookEndpoints

M = TypeVar("M", bound=BaseModel)


@dataclass(eq=False)
class Services:
    """One API process's parts, built from settings."""

    settings: Settings
    keys: Keys
    redis: Redis
    store: PreferenceStore
    users: TenantUsers
    api_keys: KeyStore
    live: LiveState
    activities: LiveRegistry
    """Live Activity tokens, Android registrations and game channels (``goalhorn.liveactivities``)."""
    policy: AddressPolicy
    limiter: RateLimiter
    switches: KillSwitches
    webhooks: WebhookEndpoints
    score_hub: StreamHub
    signal_hub: StreamHub

    @classmethod
    def build(cls, settings: Settings) -> Services:
        keys = Keys(settings.namespace)
        redis = make_redis(settings)
        store = PreferenceStore(redis, keys, buckets=settings.preference_buckets)
        return cls(
            settings=settings,
            keys=keys,
            redis=redis,
            store=store,
            users=TenantUsers(redis, keys, store),
            api_keys=KeyStore.from_settings(redis, settings),
            live=LiveState(redis, keys, retention_s=settings.live_state_retention_s),
            activities=LiveRegistry(
                redis, keys, buckets=settings.preference_buckets, ttl_s=settings.live_registration_ttl_s
            ),
            policy=AddressPolicy.from_allowlist(settings.webhook_allowlist),
            limiter=RateLimiter(redis, keys),
            switches=KillSwitches(redis, keys),
            webhooks=WebhookEndpoints(redis, keys, store, rotation_window_s=settings.api_webhook_rotation_window_s),
            score_hub=StreamHub(redis, keys.score_updates()),
            signal_hub=StreamHub(redis, keys.edge_signals()),
        )

    async def aclose(self) -> None:
        await self.score_hub.aclose()
        await self.signal_hub.aclose()
        await self.redis.aclose()


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def provide_services(request: Request) -> Services:
    """``services`` as a dependency (async: FastAPI runs a plain function in its thread pool)."""
    return request.app.state.services  # type: ignore[no-any-return]


UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="goalhorn"'}


def caller(scope: Scope, *, switchable: bool = True) -> Callable[[Request], Awaitable[ApiKey]]:
    """A dependency: the API key of the request, which must hold ``scope`` (admin holds every scope);
    ``switchable=False`` for the routes that set the kill switches themselves."""

    async def authenticate(request: Request) -> ApiKey:
        token = bearer_token(request.headers.get("authorization", ""))
        if token is None:
            raise Problem(401, "an API key is needed: Authorization: Bearer <key>", headers=UNAUTHENTICATED)
        key = await services(request).api_keys.verify(token)
        if key is None:
            raise Problem(401, "the API key is not valid (unknown, revoked or mistyped)", headers=UNAUTHENTICATED)
        if not holds(key, scope):
            raise Problem(403, f"the API key lacks the {scope!r} scope")
        svc = services(request)
        route = request.scope.get("route")
        if switchable and route is not None:
            names = [*getattr(route, "tags", []), getattr(route, "name", "")]
            off = await svc.switches.blocking([str(name) for name in names])
            if off is not None:
                raise Problem(503, f"{off[0]} is switched off: {off[1]}", headers={"Retry-After": "60"})
        verdict = await svc.limiter.hit(key.id, key.tier)
        if not verdict.allowed:
            raise rate_limited(key, verdict)
        request.state.api_key = key
        return key

    return authenticate


def bearer_token(header: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    kind, _, token = header.partition(" ")
    token = token.strip()
    return token if kind.lower() == "bearer" and token else None


def holds(key: ApiKey, scope: Scope) -> bool:
    return scope in key.scopes or "admin" in key.scopes


def rate_limited(key: ApiKey, verdict: Verdict) -> Problem:
    """The 429 of a key over its tier's rate."""
    return Problem(
        429,
        f"rate limit of the {key.tier} tier exceeded; retry after {verdict.retry_after_s:.3f}s",
        headers={"Retry-After": verdict.retry_after_header},
        retry_after_s=round(verdict.retry_after_s, 3),
    )


async def capped_body(request: Request, cap: int) -> bytes:
    """The request body, read no further than ``cap`` bytes: 413 beyond (announced or sent)."""
    declared = request.headers.get("content-length")
    too_large = Problem(413, f"the body is larger than {cap} bytes")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, model: type[M], context: dict[str, Any] | None = None) -> M:
    """The request's JSON body (at most GOALHORN_API_MAX_BODY_BYTES) as ``model``, validated with
    ``context`` (which FastAPI's own body parameters cannot pass); 422 naming each bad field."""
    if request.headers.get("content-type", "application/json").split(";")[0].strip() != "application/json":
        raise Problem(415, "the body must be application/json")
    raw = await capped_body(request, services(request).settings.api_max_body_bytes)
    try:
        return model.model_validate_json(raw or b"{}", context=context)
    except ValidationError as exc:
        raise invalid(exc) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a body read with :func:`json_body` (``create_app`` puts the model's
    schema into the document's components)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def component_schemas(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """The component schemas of ``models`` and of the models they contain."""
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


__all__ = [
    "Invalid",
    "Services",
    "bearer_token",
    "body_schema",
    "caller",
    "component_schemas",
    "holds",
    "json_body",
    "provide_services",
    "rate_limited",
    "services",
]
