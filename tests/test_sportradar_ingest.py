"""``goalhorn run ingest`` with Sportradar push feeds: a league's stream (cut once, resent after the
reconnect) becomes live state and one intent per scoring play on the bus, on both backends."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiohttp import web
from pydantic import SecretStr

from goalhorn.app.ingest import check_feeds, run_ingest
from goalhorn.bus import Bus, BusMessage
from goalhorn.errors import ConfigError
from goalhorn.ingest.live import LiveState
from goalhorn.keys import Keys
from goalhorn.models import EventKind, Intent
from goalhorn.settings import Settings
from tests.feeds import fixture
from tests.httpserver import serve

pytestmark = pytest.mark.timeout(60)
KEY = "sr-test-key-abcdef"
MLB = fixture("sportradar/mlb_push.jsonstream")
NYY, BOS = "a09ec676-f887-43dc-bbb6-ba4ba9bcdfd4", "93941372-eb4c-4c40-aced-fe3267174393"


def feed_app(keys: list[str | None]) -> web.Application:
    """The MLB stream: the first connection is cut a third of the way in, the next sends it all again."""

    async def handle(request: web.Request) -> web.StreamResponse:
        keys.append(request.headers.get("x-api-key"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if len(keys) == 1:
            await response.write(MLB[: len(MLB) // 3])
            assert request.transport is not None
            request.transport.close()
            return response
        for start in range(0, len(MLB), 1000):
            await response.write(MLB[start : start + 1000])
        await asyncio.sleep(3600)
        return response

    app = web.Application()
    app.router.add_get("/mlb/trial/stream/en/events/subscribe", handle)
    return app


async def test_a_push_feed_reaches_live_state_and_the_bus_once_per_run(bus: Bus, settings: Settings, redis) -> None:
    queue = Keys(settings.namespace).intent_queue
    await bus.start([queue])
    keys: list[str | None] = []
    async with serve(feed_app(keys)) as base:
        configured = settings.model_copy(
            update={
                "sportradar_feeds": f"{base}/mlb/trial/stream/en/events/subscribe",
                "sportradar_api_key": SecretStr(KEY),
                "poll_backoff_max_s": 0.1,
            }
        )
        summary = await run_ingest(configured, bus=bus, duration_s=2.0)

    assert keys[:2] == [KEY, KEY]
    assert summary.connections >= 2
    seen: list[BusMessage] = []

    async def handler(message: BusMessage) -> None:
        seen.append(message)

    subscription = await bus.consume(queue, handler, prefetch=16)
    async with asyncio.timeout(10):
        while len(seen) < summary.intents:
            await asyncio.sleep(0.01)
    await subscription.cancel()
    intents = [Intent.from_json(m.body) for m in seen]
    runs = [i for i in intents if i.kind is EventKind.RUN]
    assert [(i.team_id, i.data["home_score"], i.data["away_score"]) for i in runs] == [
        (NYY, "1", "0"),
        (BOS, "1", "2"),
        (NYY, "2", "2"),
        (NYY, "3", "2"),
    ]
    assert Counter(i.intent_id for i in intents).most_common(1)[0][1] == 1, "no play alerted twice"
    assert all(i.priority == 9 for i in runs)
    game_id = runs[0].game_id
    live = await LiveState(redis, Keys(settings.namespace), retention_s=60).get(f"sportradar:{game_id}")
    assert live is not None
    assert (live.state.home_score, live.state.away_score, live.state.league) == (3, 2, "mlb")


@pytest.mark.parametrize(
    ("feeds", "key", "variable"),
    [
        ("https://api.sportradar.com/mlb/production/stream/en/events/subscribe", None, "GOALHORN_SPORTRADAR_API_KEY"),
        ("https://api.sportradar.com/mlb/production/stream/en/events/subscribe", "", "GOALHORN_SPORTRADAR_API_KEY"),
        ("ftp://example.com/stream", "k", "GOALHORN_SPORTRADAR_FEEDS"),
    ],
)
def test_a_feed_without_a_key_or_with_a_bad_url_is_refused_naming_the_variable(
    feeds: str, key: str | None, variable: str
) -> None:
    settings = Settings(sportradar_feeds=feeds, sportradar_api_key=None if key is None else SecretStr(key))
    with pytest.raises(ConfigError, match=variable):
        check_feeds(settings)


def test_a_push_feed_alone_is_something_to_ingest() -> None:
    check_feeds(Settings(sportradar_feeds="https://x.example/nfl/stream", sportradar_api_key=SecretStr("k")))
