from __future__ import annotations

from datetime import UTC, datetime, timedelta

from goalhorn.ingest.live import LiveState, game_key
from goalhorn.keys import Keys
from goalhorn.models import GameStatus, Sport
from tests.support.builders import game_state

T0 = datetime(2026, 5, 2, 1, 0, tzinfo=UTC)


def state(game_id: str, status: GameStatus, *, sport: Sport = Sport.BASKETBALL, home: int = 0, at: datetime = T0):
    return game_state(game_id, status, sport=sport, home=home, observed_at=at)


def live_state(redis, settings) -> LiveState:
    return LiveState(redis, Keys(settings.namespace), retention_s=settings.live_state_retention_s)


async def test_states_are_indexed_by_sport_and_status_and_leave_the_live_index_when_final(redis, settings) -> None:
    store = live_state(redis, settings)
    written = await store.write(
        [
            state("1", GameStatus.LIVE),
            state("2", GameStatus.SCHEDULED),
            state("3", GameStatus.LIVE, sport=Sport.HOCKEY),
        ],
        now=T0 + timedelta(seconds=1),
    )
    assert written == 3
    assert set(await store.live()) == {"espn:1", "espn:2", "espn:3"}
    assert set(await store.by_sport(Sport.BASKETBALL)) == {"espn:1", "espn:2"}
    assert set(await store.by_status(GameStatus.LIVE)) == {"espn:1", "espn:3"}

    await store.write([state("1", GameStatus.FINAL, home=101, at=T0 + timedelta(minutes=1))])
    assert set(await store.live()) == {"espn:2", "espn:3"}
    assert set(await store.by_status(GameStatus.LIVE)) == {"espn:3"}
    assert await store.by_status(GameStatus.FINAL) == ["espn:1"]
    game = await store.get("espn:1")
    assert game is not None
    assert game.state.home_score == 101
    assert game.updated_at > T0 + timedelta(seconds=1)
    assert await redis.pttl(Keys(settings.namespace).game_state("espn:1")) > 0


async def test_an_older_snapshot_never_replaces_a_newer_one(redis, settings) -> None:
    store = live_state(redis, settings)
    await store.write([state("1", GameStatus.LIVE, home=3, at=T0 + timedelta(seconds=10))], now=T0)
    assert await store.write([state("1", GameStatus.LIVE, home=1, at=T0)], now=T0) == 0
    game = await store.get("espn:1")
    assert game is not None
    assert game.state.home_score == 3
    assert game.updated_at == T0
    assert game.age_s(T0 + timedelta(seconds=40)) == 30.0


async def test_the_game_key_tells_feeds_apart(redis, settings) -> None:
    store = live_state(redis, settings)
    other = state("1", GameStatus.LIVE).model_copy(update={"source": "sportradar"})
    await store.write([state("1", GameStatus.LIVE), other])
    assert set(await store.live()) == {"espn:1", "sportradar:1"}
    assert game_key(other) == "sportradar:1"
    assert await store.get("espn:404") is None
