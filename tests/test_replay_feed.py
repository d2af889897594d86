"""``goalhorn replay``: the recorded night as ESPN's scoreboard API, advancing with the clock."""

from __future__ import annotations

import time

import aiohttp

from goalhorn.demo.espn_feed import NightFeed
from goalhorn.demo.gamenight import load_gamenight
from goalhorn.ingest.espn import parse_scoreboard
from goalhorn.models import utcnow
from tests.httpserver import serve


async def test_the_feed_serves_each_league_as_it_was_at_this_moment_of_the_night() -> None:
    night = load_gamenight()
    feed = NightFeed(night, duration_s=60.0)
    nhl = [snap for snap in night if snap.league == "nhl"]
    assert feed.leagues == ["hockey/nhl", "soccer/usa.1", "basketball/nba"]
    async with serve(feed.app()) as url, aiohttp.ClientSession() as session:
        path = f"{url}/apis/site/v2/sports/hockey/nhl/scoreboard"
        async with session.get(path) as response:
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert await response.read() == nhl[0].body
        feed.started = time.monotonic() - 61.0  # the replay is over: the night's last board holds
        async with session.get(path) as response:
            last = await response.read()
        assert last == nhl[-1].body
        assert parse_scoreboard(last, observed_at=utcnow()).states
        async with session.get(f"{url}/apis/site/v2/sports/cricket/ipl/scoreboard") as response:
            assert response.status == 404
