"""A poll of a cached game (answered before FastAPI's routing, ``games.CachedGameReads``) is checked
and answered exactly as the route answers it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from goalhorn.models import GameState, GameStatus, Sport
from goalhorn.settings import Settings
from tests.support.api import Api, running_api

URL = "/v1/games/espn:401"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings) as api:
        state = GameState(
            game_id="401",
            source="espn",
            sport=Sport.HOCKEY,
            league="nhl",
            status=GameStatus.LIVE,
            home_team="EDM",
            away_team="PIT",
            home_team_id="6",
            away_team_id="16",
            home_score=2,
            away_score=1,
            period=2,
            observed_at=datetime.now(UTC),
        )
        await api.app.state.services.live.write([state])
        yield api
        redis = api.app.state.services.redis
        async for key in redis.scan_iter(match=f"{settings.namespace}:*"):
            await redis.delete(key)


async def test_a_cached_game_has_the_routes_bytes_headers_and_metrics(api: Api) -> None:
    reader = await api.as_tenant(scopes=("read",))
    first = await reader.get(URL)  # through the route, which caches it
    cached = await reader.get(URL)
    assert (cached.status_code, cached.content) == (200, first.content)
    for name in ("etag", "cache-control", "content-type", "content-length"):
        assert cached.headers[name] == first.headers[name]
    assert float(cached.headers["game-state-age"]) >= 0
    etag = first.headers["etag"]
    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        not_modified = await reader.get(URL, headers={"If-None-Match": tag})
        assert (not_modified.status_code, not_modified.content) == (304, b"")
        assert not_modified.headers["etag"] == etag
    assert (await reader.get(URL, headers={"If-None-Match": '"other"'})).status_code == 200
    metrics = (await api.client.get("/metrics")).text
    assert 'goalhorn_api_requests_total{method="GET",route="/v1/games/{game_id}",status="200"} 3.0' in metrics
    assert 'goalhorn_api_requests_total{method="GET",route="/v1/games/{game_id}",status="304"} 4.0' in metrics


async def test_a_cached_game_still_needs_a_key_with_read_and_no_switch(api: Api) -> None:
    reader = await api.as_tenant(scopes=("read",))
    assert (await reader.get(URL)).status_code == 200  # cached from here on
    for headers in ({}, {"Authorization": "Bearer ghk_unknown"}, {"Authorization": "Basic x"}):
        refused = await api.client.get(URL, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.headers["content-type"] == "application/problem+json"
    writer = await api.as_tenant(scopes=("write",))
    assert (await writer.get(URL)).status_code == 403
    admin = await api.as_tenant("ops", scopes=("admin",))
    assert (await admin.get(URL)).status_code == 200  # admin holds every scope
    for switch in ("get_game", "games"):
        assert (await admin.put(f"/v1/admin/switches/{switch}", json={"reason": "feed incident"})).status_code == 204
        off = await reader.get(URL)
        assert off.status_code == 503
        assert off.json()["detail"] == f"{switch} is switched off: feed incident"
        assert (await admin.delete(f"/v1/admin/switches/{switch}")).status_code == 204
    assert (await reader.get(URL)).status_code == 200


async def test_a_cached_game_spends_the_rate_limit_once_per_request(api: Api) -> None:
    slow = await api.as_tenant(tier="community", scopes=("read",))
    codes = [(await slow.get(URL)).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]  # a burst of 5, the first through the route, the rest cached
    refused = await slow.get(URL)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert 0 < refused.json()["retry_after_s"] <= 1
    assert refused.json()["detail"].startswith("rate limit of the community tier exceeded")
