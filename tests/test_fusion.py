from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from goalhorn.bus import Bus, BusMessage
from goalhorn.errors import ConfigError
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.fusion import EdgeEngine, EdgeOptions, skipped_count
from goalhorn.ingest.ingestor import Ingestor
from goalhorn.ingest.markets import MarketMap
from goalhorn.ingest.winprob import WinModel
from goalhorn.keys import Keys
from goalhorn.models import BookUpdate, EventKind, GameState, GameStatus, Intent, Sport
from goalhorn.settings import Settings

T0 = datetime(2026, 5, 2, 1, 0, tzinfo=UTC)
MAP = """
markets:
  - {token_id: "111", game: "espn:401", side: home}
  - {token_id: "222", game: "espn:401", side: away}
  - {token_id: "333", game: "espn:999", side: draw, prior: 0.4}
"""


def nba(home: int, away: int, clock: float = 120.0, *, at: datetime = T0, status=GameStatus.LIVE) -> GameState:
    return GameState(
        game_id="401",
        source="espn",
        sport=Sport.BASKETBALL,
        league="nba",
        status=status,
        home_team="BOS",
        away_team="NYK",
        home_team_id="2",
        away_team_id="18",
        home_score=home,
        away_score=away,
        period=4,
        clock_s=clock,
        display_clock="2:00",
        observed_at=at,
    )


def book(token: str, ask: float | None, *, at: datetime = T0) -> BookUpdate:
    return BookUpdate(token_id=token, best_bid=None, best_ask=ask, ts_ms=1, received_at=at)


def engine(**options) -> EdgeEngine:
    return EdgeEngine(MarketMap.from_yaml(MAP), WinModel(), EdgeOptions(**options))


def test_a_fresh_underpriced_side_signals_with_fair_ask_edge_and_ages() -> None:
    fusion = engine()
    assert fusion.on_book(book("111", 0.60), T0) == []
    (signal,) = fusion.on_state(nba(100, 98), T0 + timedelta(seconds=1))
    assert signal.token_id == "111"
    assert signal.side == "home"
    assert signal.fair == pytest.approx(0.766, abs=0.001)
    assert signal.ask == 0.60
    assert signal.edge_cents == pytest.approx(16.6, abs=0.1)
    assert signal.book_age_s == 1.0
    assert signal.state_age_s == 1.0
    assert fusion.skipped["no_book"] == 1  # the away token has no book yet


def test_stale_inputs_are_skipped_and_counted() -> None:
    fusion = engine()
    stale_book, stale_state = skipped_count("stale_book"), skipped_count("stale_state")
    fusion.on_state(nba(100, 98, at=T0), T0)
    assert fusion.on_book(book("111", 0.5, at=T0), T0 + timedelta(seconds=6)) == []
    assert skipped_count("stale_book") == stale_book + 1
    assert fusion.on_book(book("111", 0.5, at=T0 + timedelta(seconds=31)), T0 + timedelta(seconds=31)) == []
    assert skipped_count("stale_state") == stale_state + 1
    assert fusion.skipped == {"no_book": 2, "stale_book": 1, "stale_state": 1}


def test_small_edges_unchanged_edges_and_games_not_live_do_not_signal() -> None:
    fusion = engine(min_edge_cents=5.0)
    fusion.on_state(nba(100, 98), T0)
    assert fusion.on_book(book("111", 0.74), T0) == []
    [signal] = fusion.on_book(book("111", 0.70), T0)
    fusion.sent(signal)
    assert fusion.on_book(book("111", 0.705), T0) == []
    [signal] = fusion.on_book(book("111", 0.65), T0)
    fusion.sent(signal)
    fusion.on_state(nba(100, 98, at=T0 + timedelta(seconds=2), status=GameStatus.FINAL), T0 + timedelta(seconds=2))
    assert fusion.skipped["below_min_edge"] >= 1
    assert fusion.skipped["unchanged"] == 1
    assert fusion.skipped["not_live"] >= 1


def test_a_signal_not_reported_sent_is_made_again() -> None:
    """Its publish failed (the broker was down): the next evaluation is not taken for a repeat."""
    fusion = engine(min_edge_cents=5.0)
    fusion.on_state(nba(100, 98), T0)
    assert len(fusion.on_book(book("111", 0.70), T0)) == 1
    [again] = fusion.on_book(book("111", 0.70), T0 + timedelta(seconds=1))
    fusion.sent(again)
    assert fusion.on_book(book("111", 0.70), T0 + timedelta(seconds=2)) == []


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("markets: [{token_id: '1', game: 'espn:1', side: over}]", "side must be"),
        ("markets: [{token_id: '1', game: '401', side: home}]", "game key"),
        ("markets: [{token_id: '1', game: 'espn:1', side: home, prior: 1.5}]", "prior"),
        (
            "markets: [{token_id: '1', game: 'espn:1', side: home}, {token_id: '1', game: 'espn:2', side: away}]",
            "twice",
        ),
        ("markets: {}", "'markets' list"),
        ("markets: [", "not valid YAML"),
    ],
)
def test_a_bad_market_map_names_what_is_wrong(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MarketMap.from_yaml(text)


async def test_signals_become_priority_8_edge_intents_for_market_watchers_on_the_bus(
    bus: Bus, settings: Settings, redis
) -> None:
    queue = Keys(settings.namespace).intent_queue
    await bus.start([queue])
    ingestor = Ingestor(settings, bus, redis, engine=engine())
    now = datetime.now(UTC)
    first = await ingestor.absorb(Parsed(states=[nba(90, 98, at=now)]), diff=True, now=now)
    assert first.signals == []
    absorbed = await ingestor.absorb(
        Parsed(states=[nba(100, 98, at=now)], books=[book("111", 0.55, at=now)]), diff=True, now=now
    )
    assert [e.kind for e in absorbed.events] == [EventKind.BASKET]
    assert len(absorbed.signals) == 1
    seen: list[BusMessage] = []

    async def handler(message: BusMessage) -> None:
        seen.append(message)

    subscription = await bus.consume(queue, handler, prefetch=8)
    async with asyncio.timeout(10):
        while len(seen) < len(absorbed.intents):
            await asyncio.sleep(0.01)
    await subscription.cancel()
    # The basket may make alerts of its own under the default rules (a close game late); one edge intent.
    (message,) = [m for m in seen if Intent.from_json(m.body).kind is EventKind.EDGE]
    intent = Intent.from_json(message.body)
    assert message.priority == 8
    assert intent.kind is EventKind.EDGE
    assert intent.segments == ("market_watchers",)  # the catalog segment over market:{token_id}:watchers
    assert intent.data["token_id"] == "111"
    assert intent.collapse_key == "edge:111"
    assert float(intent.data["ask"]) == 0.55
    assert intent.intent_id == message.message_id
    live = await ingestor.live.get("espn:401")
    assert live is not None
    assert live.state.home_score == 100
