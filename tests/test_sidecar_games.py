"""``/v1/games``: live state as ingest wrote it, filtered, with strong ETags and 304s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from goalhorn.ingest.live import LiveState
from goalhorn.models import EventKind, GameEvent, GameStatus, Sport
from goalhorn.settings import Settings
from goalhorn.sidecar import streams
from goalhorn.sidecar.routes import games
from goalhorn.sidecar.streams import UpdatePublisher
from tests.support.api import Api, running_api
from tests.support.builders import game_state


def state(game_id: str, status: GameStatus, *, sport: Sport = Sport.BASKETBALL, home: int = 0, age_s: float = 2.0):
    return game_state(game_id, status, sport=sport, home=home, observed_at=datetime.now(UTC) - timedelta(seconds=age_s))


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings) as api:
        yield api
        redis = api.app.state.services.redis
        async for key in redis.scan_iter(match=f"{settings.namespace}:*"):
            await redis.delete(key)


def live(api: Api) -> LiveState:
    return api.app.state.services.live


async def test_a_game_has_a_strong_etag_and_a_poll_with_it_gets_304_until_it_changes(api: Api) -> None:
    client = await api.as_tenant(scopes=("read",))
    await live(api).write([state("401", GameStatus.LIVE, home=1, age_s=3.0)])
    first = await client.get("/v1/games/espn:401")
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["id"], body["state"]["home_score"]) == ("espn:401", 1)
    assert datetime.fromisoformat(body["updated_at"]) <= datetime.now(UTC)
    assert 3.0 <= float(first.headers["game-state-age"]) < 10
    assert first.headers["cache-control"] == "no-cache"
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert not etag.startswith("W/")

    again = await client.get("/v1/games/espn:401")
    assert again.headers["etag"] == etag
    assert again.content == first.content
    unchanged = await client.get("/v1/games/espn:401", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    listed = await client.get("/v1/games/espn:401", headers={"If-None-Match": f'"other", W/{etag}'})
    assert listed.status_code == 304

    await live(api).write([state("401", GameStatus.LIVE, home=2, age_s=0.5)])
    await asyncio.sleep(games.CACHE_S)  # a process answers a game from its cache for this long
    changed = await client.get("/v1/games/espn:401", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["state"]["home_score"] == 2
    assert changed.headers["etag"] != etag


async def test_games_are_listed_by_sport_league_and_status(api: Api) -> None:
    client = await api.as_tenant(scopes=("read",))
    await live(api).write(
        [
            state("1", GameStatus.LIVE),
            state("2", GameStatus.SCHEDULED),
            state("3", GameStatus.LIVE, sport=Sport.HOCKEY),
            state("4", GameStatus.FINAL, sport=Sport.HOCKEY),
        ]
    )

    async def ids(query: str) -> list[str]:
        answer = await client.get(f"/v1/games{query}")
        assert answer.status_code == 200, answer.text
        return sorted(g["id"] for g in answer.json()["games"])

    assert await ids("") == ["espn:1", "espn:2", "espn:3", "espn:4"]
    assert await ids("?status=live") == ["espn:1", "espn:3"]
    assert await ids("?sport=hockey") == ["espn:3", "espn:4"]
    assert await ids("?league=nhl&status=final") == ["espn:4"]
    assert await ids("?sport=basketball&status=live") == ["espn:1"]
    truncated = (await client.get("/v1/games?limit=1")).json()
    assert (len(truncated["games"]), truncated["truncated"]) == (1, True)
    bad = await client.get("/v1/games?status=paused")
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "query.status"


async def test_an_unknown_game_is_404_and_games_need_a_key(api: Api) -> None:
    client = await api.as_tenant(scopes=("read",))
    assert (await client.get("/v1/games/espn:nope")).status_code == 404
    assert (await client.get("/v1/games/not-a-key")).status_code == 422
    assert (await api.client.get("/v1/games")).status_code == 401


def goal(n: int, game_id: str = "401") -> GameEvent:
    return GameEvent(
        event_id=f"e{n}",
        kind=EventKind.GOAL,
        source="espn",
        game_id=game_id,
        sport=Sport.HOCKEY,
        league="nhl",
        team_id="6",
        home_team="EDM",
        away_team="PIT",
        home_score=n,
        away_score=0,
        period=1,
        observed_at=datetime.now(UTC),
    )


async def test_a_games_events_oldest_first_and_capped(api: Api) -> None:
    client = await api.as_tenant(scopes=("read",))
    services = api.app.state.services
    publisher = UpdatePublisher(services.redis, services.keys)
    await live(api).write([state("401", GameStatus.LIVE)])
    assert (await client.get("/v1/games/espn:401/events")).json() == {"id": "espn:401", "events": []}
    await publisher.publish([], events=[goal(1), goal(2), goal(1, game_id="999")])
    body = (await client.get("/v1/games/espn:401/events")).json()
    assert [e["event_id"] for e in body["events"]] == ["e1", "e2"]
    assert body["events"][0]["kind"] == "GOAL"
    await publisher.publish([], events=[goal(n) for n in range(3, streams.EVENTS_PER_GAME + 3)])
    kept = (await client.get("/v1/games/espn:401/events")).json()["events"]
    assert len(kept) == streams.EVENTS_PER_GAME
    assert kept[-1]["event_id"] == f"e{streams.EVENTS_PER_GAME + 2}"
    assert (await client.get("/v1/games/espn:nope/events")).status_code == 404
