from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random

import aiohttp
import pytest

from goalhorn.backoff import Backoff
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.budget import RequestBudget
from goalhorn.ingest.poller import LeaguePoller, PollOptions
from goalhorn.models import GameStatus, Sport
from tests.feeds import fixture
from tests.httpserver import Script, body, chunked, chunked_truncated, serve, stall, truncated

pytestmark = pytest.mark.timeout(30)

LIVE = fixture("espn/nhl_scoreboard.json")
FINAL = fixture("espn/nba_scoreboard_post.json")
OPTIONS = PollOptions(fast_s=5, slow_s=30, timeout_s=0.5, backoff_base_s=1, backoff_cap_s=8)


# Whole real scoreboards (364 KB and 407 KB): more than one read of aiohttp's stream returns.
FULL_BOARDS = {
    "nhl": (fixture("espn/nhl_scoreboard_full.json"), Sport.HOCKEY),
    "usa.1": (fixture("espn/usa1_scoreboard_full.json"), Sport.SOCCER),
}


async def poller_for(
    url: str,
    session,
    seen: list[Parsed],
    budget: RequestBudget | None = None,
    *,
    sport: Sport = Sport.HOCKEY,
    league: str = "nhl",
    options: PollOptions = OPTIONS,
) -> LeaguePoller:
    async def on_parsed(parsed: Parsed) -> None:
        seen.append(parsed)

    return LeaguePoller(
        session,
        url,
        sport,
        league,
        budget or RequestBudget("espn", 1000, 60),
        on_parsed,
        options=options,
        rng=random.Random(7),
    )


@pytest.mark.parametrize("league", sorted(FULL_BOARDS))
@pytest.mark.parametrize("transfer", ["content_length", "chunked", "gzip"])
async def test_real_size_boards_are_read_whole(league: str, transfer: str) -> None:
    board, sport = FULL_BOARDS[league]
    step = {
        "content_length": body(board),
        "chunked": chunked(board, size=1000),
        "gzip": body(gzip.compress(board), headers={"Content-Encoding": "gzip"}),
    }[transfer]
    script = Script([step])
    seen: list[Parsed] = []
    async with serve(script.app()) as url, aiohttp.ClientSession() as session:
        poller = await poller_for(url, session, seen, sport=sport, league=league)
        await poller.poll_once()
    assert poller.failures == {}
    (parsed,) = seen
    assert parsed.rejected == []
    assert sorted(s.game_id for s in parsed.states) == sorted(e["id"] for e in json.loads(board)["events"])


@pytest.mark.parametrize("transfer", ["content_length", "chunked"])
async def test_a_body_over_the_cap_is_a_counted_failure(transfer: str) -> None:
    board, _ = FULL_BOARDS["nhl"]
    oversized = body(board) if transfer == "content_length" else chunked(board, size=1000)
    script = Script([body(LIVE), oversized, body(LIVE)])
    seen: list[Parsed] = []
    capped = PollOptions(fast_s=5, slow_s=30, timeout_s=2, backoff_base_s=1, backoff_cap_s=8, max_body_bytes=100_000)
    async with serve(script.app()) as url, aiohttp.ClientSession() as session:
        poller = await poller_for(url, session, seen, options=capped)
        assert await poller.poll_once() == 5
        good = poller.last_good
        assert 0.5 <= await poller.poll_once() <= 1
        assert poller.failures == {"oversized": 1}
        assert poller.last_good is good
        assert await poller.poll_once() == 5  # the connection is usable again
    assert len(seen) == 2


async def test_a_chunked_body_cut_short_is_truncated() -> None:
    board, _ = FULL_BOARDS["nhl"]
    script = Script([chunked_truncated(board, size=1000)])
    seen: list[Parsed] = []
    async with serve(script.app()) as url, aiohttp.ClientSession() as session:
        poller = await poller_for(url, session, seen)
        await poller.poll_once()
    assert poller.failures == {"truncated": 1}
    assert seen == []


async def test_fast_while_a_game_is_live_slow_otherwise() -> None:
    script = Script([body(LIVE), body(FINAL)])
    seen: list[Parsed] = []
    async with serve(script.app()) as url, aiohttp.ClientSession() as session:
        poller = await poller_for(url, session, seen)
        assert await poller.poll_once() == 5
        assert await poller.poll_once() == 30
    assert script.paths == ["/apis/site/v2/sports/hockey/nhl/scoreboard"] * 2
    assert GameStatus.LIVE in {s.status for s in seen[0].states}
    assert poller.last_good_age_s() is not None


async def test_failures_back_off_with_jitter_and_the_last_good_state_is_kept(caplog) -> None:
    caplog.set_level(logging.ERROR)
    script = Script(
        [
            body(LIVE),
            body(b"<html>bad gateway</html>", status=502),
            stall(2.0),
            truncated(LIVE),
            body(LIVE[: len(LIVE) // 2]),
            body(b"slow down", status=429, headers={"Retry-After": "20"}),
            body(b"nope", status=404),
            body(LIVE),
        ]
    )
    seen: list[Parsed] = []
    async with serve(script.app()) as url, aiohttp.ClientSession() as session:
        poller = await poller_for(url, session, seen)
        assert await poller.poll_once() == 5
        good = poller.last_good
        delays = [await poller.poll_once() for _ in range(6)]
        assert poller.last_good is good
        assert poller.failures == {
            "http_5xx": 1,
            "timeout": 1,
            "truncated": 1,
            "malformed": 1,
            "http_429": 1,
            "http_4xx": 1,
        }
        assert await poller.poll_once() == 5
    ceilings = [1, 2, 4, 8, 16, 8]
    for delay, ceiling, failure in zip(delays, ceilings, range(6), strict=True):
        if failure == 4:
            assert delay == 20  # Retry-After beats a shorter backoff
        else:
            assert min(ceiling, 8) / 2 <= delay <= min(ceiling, 8)
    assert poller.backoff.failures == 0
    assert len(seen) == 2
    rejected = [r.reason for r in poller.adapter.quarantine.items()]
    assert rejected == ["not_json"]


async def test_a_spent_budget_skips_polls_instead_of_requesting() -> None:
    script = Script([body(FINAL)])
    now = [0.0]
    budget = RequestBudget("espn", 5, 60, clock=lambda: now[0])
    seen: list[Parsed] = []
    async with serve(script.app()) as url, aiohttp.ClientSession() as session:
        poller = await poller_for(url, session, seen, budget)
        for _ in range(5):
            await poller.poll_once()
            now[0] += 1
        assert budget.warnings == 1
        wait = await poller.poll_once()
        assert wait == pytest.approx(55)
        assert len(script.paths) == 5
        now[0] = 61
        await poller.poll_once()
        assert len(script.paths) == 6
    assert budget.refusals == 1


async def test_run_keeps_polling_through_errors_until_cancelled() -> None:
    script = Script([body(b"", status=503), body(LIVE)])
    delays: list[float] = []
    seen: list[Parsed] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) >= 3:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    async with serve(script.app()) as url, aiohttp.ClientSession() as session:
        poller = await poller_for(url, session, seen)
        poller._sleep = fake_sleep
        with pytest.raises(asyncio.CancelledError):
            await poller.run()
    assert delays[1:] == [5, 5]
    assert 0.5 <= delays[0] <= 1
    assert len(seen) == 2


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(1, 10, random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    assert all(min(10, 2**n) / 2 <= d <= min(10, 2**n) for n, d in enumerate(delays))
    backoff.reset()
    assert backoff.next_delay() <= 1
