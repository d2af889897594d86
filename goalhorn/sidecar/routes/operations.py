"""``/v1/admin/{status,queues,dlq,breakers,pause,resume,trace}``: the ops commands over HTTP (admin
scope), for operators without direct RabbitMQ and Redis access.

Each route is a thin call of the ``goalhorn.admin`` library the CLI uses and answers the document of
``goalhorn <command> --json`` (``goalhorn.admin.documents``). The data is deployment-wide (the
namespace of the API's settings), never one tenant's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import aiormq.exceptions
from fastapi import APIRouter, Depends, Path, Query, Response

from goalhorn.admin import documents
from goalhorn.admin.breakers import read_board, reset
from goalhorn.admin.dlq import Filter, list_groups, replay
from goalhorn.admin.pause import POLL_S, pause, resume
from goalhorn.admin.queues import queue_stats
from goalhorn.admin.status import status
from goalhorn.admin.trace import trace
from goalhorn.errors import ConfigError, GoalhornError
from goalhorn.keys import Platform
from goalhorn.sidecar.apikeys import ApiKey
from goalhorn.sidecar.deps import Services, caller, provide_services
from goalhorn.sidecar.problems import Problem, not_found

router = APIRouter(tags=["admin"])
Admin = Annotated[ApiKey, Depends(caller("admin", switchable=False))]
Svc = Annotated[Services, Depends(provide_services)]
Provider = Annotated[Platform, Path(description="fcm, apns or webhook.")]
ProviderFilter = Annotated[Platform | None, Query(description="Only this provider's dead letters.")]
ReasonFilter = Annotated[str | None, Query(description="A dead-letter code, e.g. attempts_exhausted.")]
SinceFilter = Annotated[str | None, Query(description="From this long ago (30m, 2h, 1d) or an ISO time with its zone.")]


@asynccontextmanager
async def _answering() -> AsyncIterator[None]:
    """The library's errors as problems: bad input 422, a service missing or failing 503."""
    try:
        yield
    except ConfigError as exc:
        raise Problem(503, str(exc).splitlines()[0], headers={"Retry-After": "60"}) from None
    except GoalhornError as exc:
        raise Problem(422, str(exc).splitlines()[0]) from None
    except aiormq.exceptions.AMQPError as exc:
        raise Problem(503, f"RabbitMQ failed ({type(exc).__name__})", headers={"Retry-After": "1"}) from None


def _filter(provider: str | None, reason: str | None, since: str | None) -> Filter:
    try:
        return Filter.parse(provider, reason, since)
    except GoalhornError as exc:
        raise Problem(422, str(exc)) from None


@router.get("/status")
async def get_status(
    key: Admin, svc: Svc, interval: Annotated[float, Query(ge=0.2, le=2.0, description="Seconds rates are over.")] = 1.0
) -> dict[str, Any]:
    """``goalhorn status --json``: throughput, latency, queues, pauses, breakers, dead letters, games."""
    async with _answering():
        return documents.status_json(await status(svc.settings, interval))


@router.get("/queues")
async def get_queues(key: Admin, svc: Svc) -> list[dict[str, Any]]:
    """``goalhorn queues stats --json``: every queue of the namespace."""
    async with _answering():
        return documents.queues_json(await queue_stats(svc.settings))


@router.get("/dlq")
async def get_dead_letters(
    key: Admin, svc: Svc, provider: ProviderFilter = None, reason: ReasonFilter = None, since: SinceFilter = None
) -> dict[str, Any]:
    """``goalhorn dlq list --json``: dead letters grouped by code and provider."""
    where = _filter(provider, reason, since)
    async with _answering():
        return documents.listing_json(await list_groups(svc.redis, svc.keys, where))


@router.post("/dlq/replay")
async def replay_dead_letters(
    key: Admin,
    svc: Svc,
    provider: ProviderFilter = None,
    reason: ReasonFilter = None,
    since: SinceFilter = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """``goalhorn dlq replay --json``: the matching batches back on their delivery queues."""
    where = _filter(provider, reason, since)
    async with _answering():
        return documents.replay_json(await replay(svc.settings, svc.redis, where, dry_run=dry_run))


@router.get("/breakers")
async def get_breakers(key: Admin, svc: Svc) -> list[dict[str, Any]]:
    """``goalhorn breakers --json``: every circuit the workers share."""
    return documents.breakers_json(await read_board(svc.redis, svc.keys))


@router.post("/breakers/{circuit}/reset", status_code=204, response_class=Response)
async def reset_breaker(circuit: Annotated[str, Path(max_length=512)], key: Admin, svc: Svc) -> Response:
    """``goalhorn breakers reset ID``: close a circuit on every worker; 404 if none ever shared it."""
    if not await reset(svc.redis, svc.keys, circuit, by=f"api:{key.id}"):
        raise not_found("circuit")
    return Response(status_code=204)


@router.post("/pause/{provider}")
async def pause_provider(provider: Provider, key: Admin, svc: Svc, reason: str = "") -> dict[str, Any]:
    """``goalhorn pause PROVIDER --json``: every worker stops taking its batches within a second."""
    by = f"api:{key.tenant}:{key.id}"
    await pause(svc.redis, svc.keys, provider, by, reason)
    return documents.pause_json(provider, by, POLL_S)


@router.post("/resume/{provider}")
async def resume_provider(provider: Provider, key: Admin, svc: Svc) -> dict[str, Any]:
    """``goalhorn resume PROVIDER --json``."""
    return documents.resume_json(provider, await resume(svc.redis, svc.keys, provider), POLL_S)


@router.get("/trace/{intent_id}")
async def trace_intent(
    intent_id: Annotated[str, Path(max_length=256)], key: Admin, svc: Svc, devices: bool = False
) -> list[dict[str, Any]]:
    """``goalhorn trace INTENT_ID --json``; 404 when nothing is known of it (traces are kept 72 h)."""
    found = await trace(svc.redis, svc.keys, intent_id, devices=devices)
    if found is None:
        raise not_found("trace")
    return [documents.trace_json(found)]
