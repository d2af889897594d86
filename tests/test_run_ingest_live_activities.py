"""``goalhorn run ingest`` with GOALHORN_LIVE_ACTIVITIES=true, as a user runs it, polling the recorded
night (``goalhorn replay``'s feed): every game's ticker goes out on RabbitMQ as one start, updates
in the order of the game, and one end, each within Apple's and FCM's payload limits."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import aio_pika
import pytest
import redis as sync_redis

from goalhorn.demo.espn_feed import NightFeed
from goalhorn.demo.gamenight import load_gamenight
from goalhorn.ingest.espn import parse_scoreboard
from goalhorn.intents.liveactivity import HIGH, LOW, sizes_of
from goalhorn.keys import Keys
from goalhorn.models import EventKind, Intent, utcnow
from goalhorn.settings import LOCAL_AMQP_URL, LOCAL_REDIS_URL
from tests.httpserver import serve
from tests.processes import Process, processes, real_env

pytestmark = pytest.mark.timeout(120)
REPLAY_S = 8.0


def finals(namespace: str) -> int:
    client = sync_redis.Redis.from_url(LOCAL_REDIS_URL)
    try:
        return int(client.zcard(Keys(namespace).games_by_status("final")))
    finally:
        client.close()


async def drained(namespace: str) -> list[Intent]:
    connection = await aio_pika.connect(LOCAL_AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(Keys(namespace).intent_queue, passive=True)
        found = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found.append(Intent.from_json(message.body))
        return found


async def test_run_ingest_publishes_each_games_ticker_from_start_to_end(tmp_path) -> None:
    night = load_gamenight()
    games = {state.game_id for snap in night for state in parse_scoreboard(snap.body, observed_at=utcnow()).states}
    feed = NightFeed(night, duration_s=REPLAY_S)
    async with serve(feed.app()) as url:
        env = real_env(
            GOALHORN_ESPN_BASE_URL=url,
            GOALHORN_ESPN_LEAGUES=",".join(feed.leagues),
            GOALHORN_POLL_FAST_S="0.2",
            GOALHORN_POLL_SLOW_S="0.2",
            GOALHORN_LIVE_ACTIVITIES="true",
            GOALHORN_LIVE_ACTIVITY_TICK_S="1",
        )
        namespace = env["GOALHORN_NAMESPACE"]
        with processes(tmp_path) as running:
            ingest = running["ingest"] = Process("ingest", ["run", "ingest"], env, tmp_path).start()
            await asyncio.to_thread(ingest.wait_for, r"running \(namespace")
            feed.started = time.monotonic()  # the night starts once ingest polls it
            async with asyncio.timeout(REPLAY_S + 30):
                while await asyncio.to_thread(finals, namespace) < len(games):
                    await asyncio.sleep(0.2)
            assert await asyncio.to_thread(ingest.terminate, 60) == 0

    intents = await drained(namespace)
    tickers: dict[str, list[Intent]] = defaultdict(list)
    for intent in sorted((i for i in intents if i.template == "liveactivity"), key=lambda i: i.event_at):
        tickers[intent.game_id].append(intent)
    assert set(tickers) == {f"espn:{game}" for game in games}
    for game, ticker in tickers.items():
        moments = [(i.data["live_event"], i.kind, i.priority) for i in ticker]
        assert moments[0] == ("start", EventKind.GAME_START, HIGH), game
        assert moments[-1] == ("end", EventKind.GAME_END, HIGH), game
        assert {m[0] for m in moments[1:-1]} <= {"update"}, game
        assert all(p == LOW for _, kind, p in moments if kind is EventKind.LIVE_UPDATE), game
        assert len({i.event_at for i in ticker}) == len(ticker), f"{game}: a state published twice"
        assert all(sizes_of(i).fit() for i in ticker)
        assert {i.segments for i in ticker} == {(f"live:{game}",)}
    scores = [i for t in tickers.values() for i in t if i.kind in (EventKind.GOAL, EventKind.BASKET)]
    assert scores, "the night has goals and baskets"
    assert [i for i in intents if i.template != "liveactivity"], "the alerts went out too"
