"""Server-sent events: ``GET /v1/stream?games=...`` (score updates) and ``GET /v1/signals/stream``
(edge signals), through FastAPI's own SSE support (its keep-alive comment is the heartbeat).

Each event's ``id`` is its Redis stream id: a client reconnecting with ``Last-Event-ID`` gets what
it missed while it is still in the (capped) stream, and a ``gap`` event first when some of it was
trimmed, meaning: refetch ``/v1/games``. A client that falls behind is dropped (see
``goalhorn.sidecar.streams``), and one that stops reading is cut off by the slow-send guard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from goalhorn.sidecar.apikeys import ApiKey
from goalhorn.sidecar.deps import Services, caller, provide_services
from goalhorn.sidecar.problems import Invalid
from goalhorn.sidecar.streams import GAP, Entry, StreamHub, valid_id

router = APIRouter(tags=["streams"])
Reader = Annotated[ApiKey, Depends(caller("read"))]
Svc = Annotated[Services, Depends(provide_services)]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=41)]
MAX_GAMES = 100


async def resume_from(last_event_id: LastEventId = None) -> str | None:
    """The ``Last-Event-ID`` to resume after, checked before the stream starts (a dependency)."""
    if last_event_id is None or last_event_id == "":
        return None
    if not valid_id(last_event_id):
        raise Invalid([{"field": "header.Last-Event-ID", "detail": "not an event id of this stream"}])
    return last_event_id


async def _events(
    hub: StreamHub, kind: str, games: list[str] | None, last: str | None
) -> AsyncIterator[ServerSentEvent]:
    entry: Entry
    async for entry in hub.subscribe(games, last):
        if entry is GAP:
            yield ServerSentEvent(event="gap", raw_data="{}")
        else:
            yield ServerSentEvent(id=entry.id, event=kind, raw_data=entry.data)


async def wanted_games(
    games: Annotated[
        str | None,
        Query(pattern=r"^[!-~]{1,200}(,[!-~]{1,200})*$", description="Game ids (<source>:<id>), comma-separated"),
    ] = None,
) -> list[str] | None:
    wanted = games.split(",") if games else None
    if wanted is not None and len(wanted) > MAX_GAMES:
        raise Invalid([{"field": "query.games", "detail": f"at most {MAX_GAMES} games"}])
    return wanted


Resume = Annotated[str | None, Depends(resume_from)]


@router.get("/v1/stream", response_class=EventSourceResponse)
async def score_stream(
    key: Reader, svc: Svc, resume: Resume, games: Annotated[list[str] | None, Depends(wanted_games)]
) -> AsyncIterator[ServerSentEvent]:
    """Score updates (``event: score``, data: the game state) of the given games, or of all."""
    async for event in _events(svc.score_hub, "score", games, resume):
        yield event


@router.get("/v1/signals/stream", response_class=EventSourceResponse)
async def signal_stream(key: Reader, svc: Svc, resume: Resume) -> AsyncIterator[ServerSentEvent]:
    """Edge signals (``event: signal``, data: the signal) as fusion emits them."""
    async for event in _events(svc.signal_hub, "signal", None, resume):
        yield event
