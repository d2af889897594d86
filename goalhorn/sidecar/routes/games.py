"""``/v1/games``: live game state as ingest wrote it to Redis (the sidecar only reads it).

A game is named by its key, ``<source>:<feed's game id>`` (``espn:401461455``), as feeds number
games differently. Reads of one game are cached in the process for ``CACHE_S`` (250 ms): a poll
answered from it costs no Redis round trip, and its state is at most that much older than Redis's
(``updated_at`` and the age say how old it is; the streams carry changes as they happen). A poll of
a cached game is answered ahead of FastAPI by ``CachedGameReads``, with the same checks.

``GET /v1/games/{game_id}`` answers a strong ``ETag`` (a digest of the exact bytes) and
``Cache-Control: no-cache``, so a client polling with ``If-None-Match`` gets a body-less 304 until
the state changes. The body carries ``updated_at`` (when ingest stored the state) and ``observed_at``;
the age, which grows every second, is the ``Game-State-Age`` header (seconds since the feed observed
it): in the body it would change the bytes, and with them the ETag, on every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from goalhorn.errors import StoreError
from goalhorn.ingest.live import LiveGame
from goalhorn.keys import GAME_KEY_PATTERN
from goalhorn.models import GameEvent, GameState, GameStatus, Sport
from goalhorn.sidecar.apikeys import ApiKey
from goalhorn.sidecar.deps import Services, bearer_token, caller, holds, provide_services, rate_limited
from goalhorn.sidecar.problems import not_found, problem_response

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/games", tags=["games"])
GameKey = Annotated[str, Path(pattern=GAME_KEY_PATTERN, description="<source>:<game id>")]
MAX_LIST = 500
AGE_HEADER = "Game-State-Age"
CACHE_S = 0.25
MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class Rendered:
    """One game's answer, as sent: its bytes and their ETag."""

    body: bytes
    etag: str
    observed_at: float
    """When the feed observed the state (epoch seconds), for the age header."""

    @classmethod
    def of(cls, body: bytes, observed_at: datetime) -> Rendered:
        return cls(body, _etag(body), observed_at.timestamp())

    def headers(self) -> dict[str, str]:
        age = max(0.0, time.time() - self.observed_at)
        return {"ETag": self.etag, "Cache-Control": "no-cache", AGE_HEADER: f"{age:.3f}"}


class GameCache:
    """A process's recently answered games (``CACHE_S``), so hot games cost no Redis round trip."""

    def __init__(self) -> None:
        self._games: dict[str, tuple[float, Rendered]] = {}

    def get(self, game_id: str) -> Rendered | None:
        hit = self._games.get(game_id)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, game_id: str, rendered: Rendered) -> None:
        if len(self._games) >= MAX_CACHED:
            self._games.clear()
        self._games[game_id] = (time.monotonic() + CACHE_S, rendered)


class Game(BaseModel):
    id: str = Field(description="The game's key, <source>:<game id>.")
    updated_at: datetime = Field(description="When ingest stored this state.")
    state: GameState


class GameEvents(BaseModel):
    id: str
    events: list[GameEvent] = Field(description="The game's events, oldest first (at most the last 500).")


class GameList(BaseModel):
    games: list[Game]
    truncated: bool = Field(description="More games matched than `limit`; narrow the filters.")


def _game(key: str, live: LiveGame) -> Game:
    return Game(id=key, updated_at=live.updated_at, state=live.state)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(header: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): ``W/"x"`` matches ``"x"``."""
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


@router.get("", response_model=GameList)
async def list_games(
    key: Annotated[ApiKey, Depends(caller("read"))],
    svc: Annotated[Services, Depends(provide_services)],
    sport: Annotated[Sport | None, Query()] = None,
    league: Annotated[str | None, Query(pattern=r"^[!-~]{1,64}$")] = None,
    status: Annotated[GameStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> GameList:
    """Games in live state, newest update first, filtered by sport, league and status."""
    if status is not None:
        names = await svc.live.by_status(status)
    elif sport is not None:
        names = await svc.live.by_sport(sport)
    else:
        lists = await asyncio.gather(*(svc.live.by_status(s) for s in GameStatus))
        names = [name for found in lists for name in found]
    games: list[Game] = []
    # The indexes keep a game's key a while after its state expired: such keys are skipped.
    for name, live in zip(names, await asyncio.gather(*(svc.live.get(name) for name in names)), strict=True):
        if live is None:
            continue
        if (sport is None or live.state.sport == sport) and (league is None or live.state.league == league):
            games.append(_game(name, live))
    games.sort(key=lambda g: g.updated_at, reverse=True)
    return GameList(games=games[:limit], truncated=len(games) > limit)


@router.get(
    "/{game_id}",
    response_model=Game,
    responses={304: {"description": "Not modified since the ETag given in If-None-Match"}},
)
async def get_game(
    game_id: GameKey,
    request: Request,
    key: Annotated[ApiKey, Depends(caller("read"))],
    svc: Annotated[Services, Depends(provide_services)],
) -> Response:
    """One game's latest state, with a strong ETag; 304 when If-None-Match holds it."""
    cache: GameCache = request.app.state.game_cache
    rendered = cache.get(game_id)
    if rendered is None:
        live = await svc.live.get(game_id)
        if live is None:
            raise not_found("game")
        rendered = Rendered.of(_game(game_id, live).model_dump_json().encode(), live.state.observed_at)
        cache.put(game_id, rendered)
    headers = rendered.headers()
    if _matches(request.headers.get("if-none-match", ""), rendered.etag):
        return Response(status_code=304, headers=headers)
    return Response(rendered.body, media_type="application/json", headers=headers)


@router.get("/{game_id}/events", response_model=GameEvents)
async def game_events(
    game_id: GameKey,
    key: Annotated[ApiKey, Depends(caller("read"))],
    svc: Annotated[Services, Depends(provide_services)],
) -> GameEvents:
    """What happened in a game (goals, period ends, cards...), oldest first, as ingest acted on it;
    404 when the game is not in live state."""
    raws, live = await asyncio.gather(
        svc.redis.lrange(svc.keys.game_events(game_id), 0, -1),
        svc.live.get(game_id),
    )
    if live is None and not raws:
        raise not_found("game")
    return GameEvents(id=game_id, events=[GameEvent.model_validate_json(raw) for raw in raws])


class CachedGameReads:
    """``GET /v1/games/{game_id}`` of a cached game answered without FastAPI's routing, dependency
    resolution and response classes (about half of a poll's cost; see docs/api.md, Performance).

    It makes the checks of ``deps.caller("read")`` in the same order: key, scope, kill switches
    (``games``, ``get_game``), then the rate limit. Anything else (another route, a game not in the
    cache, a check that does not pass, Redis failing before the rate limit) goes on to ``app``, which
    checks again and answers as it always does; nothing is spent before the rate limit, so the checks
    made twice have no effect twice. The cache only holds games ``get_game`` answered, so their ids
    passed its path pattern.
    """

    PREFIX = "/v1/games/"
    SWITCHES = ["games", "get_game"]

    def __init__(self, app: ASGIApp, *, services: Services, cache: GameCache) -> None:
        self.app = app
        self.svc = services
        self.cache = cache
        self.route = next(route for route in router.routes if getattr(route, "name", None) == "get_game")
        """``get_game``'s route, put in the scope as routing would (the metrics name requests by it)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(self.PREFIX):
            return await self.app(scope, receive, send)
        game_id = scope["path"][len(self.PREFIX) :]
        rendered = self.cache.get(game_id) if "/" not in game_id and not scope.get("root_path") else None
        key = await self._caller(scope) if rendered is not None else None
        if rendered is None or key is None:
            return await self.app(scope, receive, send)
        scope["route"] = self.route
        try:
            verdict = await self.svc.limiter.hit(key.id, key.tier)
        except (StoreError, RedisError) as exc:
            log.warning("GET %s: storage failed: %s: %s", scope["path"], type(exc).__name__, exc)
            await problem_response(503, "storage is unavailable; try again shortly", headers={"Retry-After": "1"})(
                scope, receive, send
            )
            return None
        if not verdict.allowed:
            limited = rate_limited(key, verdict)
            await problem_response(limited.status, limited.detail, headers=limited.headers, **limited.members)(
                scope, receive, send
            )
            return None
        scope.setdefault("state", {})["api_key"] = key
        headers = [(name.lower().encode(), value.encode()) for name, value in rendered.headers().items()]
        if _matches(_header(scope, b"if-none-match"), rendered.etag):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return None
        headers += [(b"content-length", b"%d" % len(rendered.body)), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": rendered.body})
        return None

    async def _caller(self, scope: Scope) -> ApiKey | None:
        """The request's key when it may read and no switch is set; None to let ``app`` answer."""
        token = bearer_token(_header(scope, b"authorization"))
        if token is None:
            return None
        try:
            key = await self.svc.api_keys.verify(token)
            if key is None or not holds(key, "read") or await self.svc.switches.blocking(self.SWITCHES) is not None:
                return None
        except (StoreError, RedisError):
            return None
        return key


def _header(scope: Scope, name: bytes) -> str:
    """The first ``name`` header, as Starlette's ``Headers.get`` gives it."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return ""
