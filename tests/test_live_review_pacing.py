"""Review of Live Activity pacing (issue 15): a live game whose content does not change for longer than
``STALE_S`` (a weather delay, a long halftime show, a video review) still gets an update before its
ticker's ``stale-date``: the state is current, only unchanged, and a ticker shown as stale while the
game is live misleads (ActivityKit's ``isStale``)."""

from __future__ import annotations

from datetime import timedelta

from goalhorn.intents.liveactivity import STALE_S
from goalhorn.redis_client import Redis
from goalhorn.settings import Settings
from tests.test_liveactivity_intents import T0, pacing, soccer


async def test_an_unchanged_live_game_is_refreshed_before_its_ticker_goes_stale(
    settings: Settings, redis: Redis
) -> None:
    pace = pacing(redis, settings)
    assert await pace.claim(soccer(0), [], T0) is not None  # the start: stale at T0 + STALE_S
    refreshed = []
    for second in range(30, STALE_S, 30):  # a poll every 30 s during a delay: nothing changes
        if await pace.claim(soccer(second), [], T0 + timedelta(seconds=second)) is not None:
            refreshed.append(second)
    assert refreshed, f"no update in {STALE_S} s: the live game's ticker shows as stale"
