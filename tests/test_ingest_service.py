from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from aiohttp import web

from goalhorn.app.ingest import leagues_of, run_ingest
from goalhorn.bus import Bus, BusMessage
from goalhorn.errors import ConfigError
from goalhorn.ingest.live import LiveState
from goalhorn.ingest.quarantine import QuarantineStore
from goalhorn.keys import Keys
from goalhorn.models import EventKind, Intent
from goalhorn.settings import Settings
from tests.feeds import fixture
from tests.httpserver import Script, body, serve

pytestmark = pytest.mark.timeout(60)
GAME = "401461456"  # ARI (home) 1 - 3 ANA, third period, 9:03 left


def scoreboard_with_home_score(score: str) -> bytes:
    board = json.loads(fixture("espn/nhl_scoreboard.json"))
    for event in board["events"]:
        if event["id"] == GAME:
            for competitor in event["competitions"][0]["competitors"]:
                if competitor["homeAway"] == "home":
                    competitor["score"] = score
    return json.dumps(board).encode()


def market_app() -> web.Application:
    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_str()
        book = {"event_type": "book", "asset_id": "ana", "bids": [], "asks": [{"price": ".50", "size": "9"}]}

        async def pump() -> None:
            for ts in range(2, 1000):
                await ws.send_str(json.dumps(book | {"timestamp": str(ts)}))
                await asyncio.sleep(0.05)

        sending = asyncio.create_task(pump())
        try:
            async for _ in ws:  # reading is what answers the client's close
                pass
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sending
        return ws

    app = web.Application()
    app.router.add_get("/ws/market", handle)
    return app


async def test_pollers_and_market_stream_feed_live_state_and_the_bus(
    bus: Bus, settings: Settings, redis, tmp_path
) -> None:
    queue = Keys(settings.namespace).intent_queue
    await bus.start([queue])
    script = Script(
        [body(scoreboard_with_home_score("1")), body(b'{"events": [tr'), body(scoreboard_with_home_score("2"))]
    )
    market_map = tmp_path / "markets.yaml"
    market_map.write_text(f"markets:\n  - {{token_id: ana, game: 'espn:{GAME}', side: away}}\n")
    async with serve(script.app()) as espn, serve(market_app()) as market:
        configured = settings.model_copy(
            update={
                "espn_base_url": espn,
                "espn_leagues": "hockey/nhl",
                "poll_fast_s": 0.05,
                "poll_slow_s": 0.05,
                "poll_backoff_base_s": 0.01,
                "market_map_path": str(market_map),
                "polymarket_ws_url": market.replace("http", "ws") + "/ws/market",
                "market_ping_s": 0.5,
            }
        )
        summary = await run_ingest(configured, bus=bus, duration_s=1.5)

    assert summary.polls >= 3
    assert summary.poll_failures == {"malformed": 1}
    assert summary.rejected == 1
    assert summary.connections == 1
    assert summary.events >= 1
    (kept,) = await QuarantineStore(redis, Keys(settings.namespace)).recent()
    assert (kept["source"], kept["reason"], kept["payload"]) == ("espn", "not_json", b'{"events": [tr')
    seen: list[BusMessage] = []

    async def handler(message: BusMessage) -> None:
        seen.append(message)

    subscription = await bus.consume(queue, handler, prefetch=16)
    async with asyncio.timeout(10):
        while len(seen) < summary.intents:
            await asyncio.sleep(0.01)
    await subscription.cancel()
    intents = [Intent.from_json(m.body) for m in seen]
    goals = [i for i in intents if i.kind is EventKind.GOAL]
    assert [(i.game_id, i.data["home_score"], i.data["away_score"]) for i in goals] == [(GAME, "2", "3")]
    edges = [i for i in intents if i.kind is EventKind.EDGE]
    assert edges
    assert edges[0].segments == ("market_watchers",)
    assert edges[0].data["token_id"] == "ana"
    assert float(edges[0].data["fair"]) - 0.5 > 0.03
    live = await LiveState(redis, Keys(settings.namespace), retention_s=60).get(f"espn:{GAME}")
    assert live is not None
    assert live.state.home_score == 2


@pytest.mark.parametrize("leagues", ["nhl", "cricket/ipl", "hockey/"])
def test_bad_league_configuration_is_refused(leagues: str) -> None:
    with pytest.raises(ConfigError, match="GOALHORN_ESPN_LEAGUES"):
        leagues_of(Settings(espn_leagues=leagues))


async def test_nothing_configured_is_refused() -> None:
    with pytest.raises(ConfigError, match="nothing to ingest"):
        await run_ingest(Settings(namespace="tnothing"))


def test_run_ingest_says_what_is_missing() -> None:
    from tests.processes import clean_env, run_command

    result = run_command(["run", "ingest"], clean_env())
    assert result.returncode == 2
    assert "GOALHORN_ESPN_LEAGUES" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_command(["run", "ingest"], clean_env(GOALHORN_ESPN_LEAGUES="cricket/ipl"))
    assert result.returncode == 2
    assert "not <sport>/<league>" in result.stderr
