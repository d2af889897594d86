"""The ingest stage publishes a game's Live Activity updates on the intent bus (RabbitMQ, and the
embedded bus), beside its alerts, when GOALHORN_LIVE_ACTIVITIES is on; a publish that failed is
published again with the next poll, once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from goalhorn.app.ingest import IngestStage
from goalhorn.app.parts import Parts
from goalhorn.bus import Bus, Handler, Subscription
from goalhorn.errors import PublishNotConfirmed
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.ingestor import Ingestor
from goalhorn.intents.liveactivity import live_intent
from goalhorn.keys import Keys
from goalhorn.models import EventKind, GameState, GameStatus, Intent, Sport
from goalhorn.settings import Settings
from tests.queues import published

pytestmark = pytest.mark.timeout(60)
T0 = datetime(2026, 5, 2, 23, 0, tzinfo=UTC)


class RefusingBus(Bus):
    """A real bus that does not confirm the first ``failures`` publishes ``refuse`` picks."""

    def __init__(self, inner: Bus, refuse: Callable[[bytes], bool], failures: int = 1) -> None:
        self.inner = inner
        self.refuse = refuse
        self.failures = failures

    async def start(self, queues: Iterable[str]) -> None:
        await self.inner.start(queues)

    async def publish(
        self, queue: str, body: bytes, *, priority: int = 0, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        if self.failures > 0 and self.refuse(body):
            self.failures -= 1
            raise PublishNotConfirmed(f"{message_id!r} to {queue!r}: nacked")
        await self.inner.publish(queue, body, priority=priority, message_id=message_id, headers=headers)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        return await self.inner.consume(queue, handler, prefetch=prefetch)

    async def depth(self, queue: str) -> int:
        return await self.inner.depth(queue)

    async def purge(self, queue: str) -> int:
        return await self.inner.purge(queue)

    async def aclose(self) -> None:
        await self.inner.aclose()


def hockey(second: float, **changes: Any) -> GameState:
    values: dict[str, Any] = {
        "game_id": "401559281",
        "source": "espn",
        "sport": Sport.HOCKEY,
        "league": "nhl",
        "status": GameStatus.LIVE,
        "status_detail": "STATUS_IN_PROGRESS",
        "home_team": "PIT",
        "away_team": "CBJ",
        "home_team_id": "16",
        "away_team_id": "29",
        "home_score": 0,
        "away_score": 0,
        "period": 1,
        "display_clock": "20:00",
        "observed_at": T0 + timedelta(seconds=second),
    }
    return GameState(**(values | changes))


def live(intents: list[Intent]) -> list[tuple[str, EventKind, int]]:
    """The Live Activity intents in the order of the states they carry (the queue serves by priority)."""
    mine = sorted((i for i in intents if i.template == "liveactivity"), key=lambda i: i.event_at)
    return [(i.data["live_event"], i.kind, i.priority) for i in mine]


def on(settings: Settings, **more: object) -> Settings:
    return settings.model_copy(update={"live_activities": True, "live_activity_tick_s": 60.0, **more})


async def test_a_game_night_becomes_start_updates_ticks_and_end_beside_the_alerts(
    bus: Bus, settings: Settings, redis
) -> None:
    await bus.start([Keys(settings.namespace).intent_queue])
    ingestor = Ingestor(on(settings), bus, redis)

    async def poll(state: GameState) -> list[Intent]:
        return (await ingestor.absorb(Parsed(states=[state]), diff=True, now=state.observed_at)).live

    assert await poll(hockey(0, status=GameStatus.SCHEDULED, status_detail="STATUS_SCHEDULED")) == []
    assert [i.data["live_event"] for i in await poll(hockey(10))] == ["start"]
    assert await poll(hockey(15)) == []  # re-polled: nothing changed
    assert await poll(hockey(20, display_clock="19:50")) == []  # a clock tick inside the window
    (goal,) = await poll(hockey(30, home_score=1, display_clock="19:40"))
    assert json.loads(goal.data["liveactivity"])["content-state"]["home_score"] == 1
    assert await poll(hockey(35, home_score=1, display_clock="19:35")) == []
    assert len(await poll(hockey(95, home_score=1, display_clock="18:35"))) == 1  # the window is over
    final = hockey(4000, home_score=1, status=GameStatus.FINAL, status_detail="STATUS_FINAL", period=3)
    assert len(await poll(final)) == 1
    assert await poll(final) == []  # the same final state again
    assert await poll(hockey(4010, home_score=1, status=GameStatus.FINAL, period=3)) == []

    intents = await published(bus, settings, at_least=6)
    assert live(intents) == [
        ("start", EventKind.GAME_START, 9),
        ("update", EventKind.GOAL, 9),
        ("update", EventKind.LIVE_UPDATE, 3),
        ("end", EventKind.GAME_END, 9),
    ]
    alerts = [i for i in intents if i.template != "liveactivity"]
    assert [i.kind for i in alerts].count(EventKind.GOAL) == 1  # the alerts still go out, each once
    assert len({i.intent_id for i in alerts}) == len(alerts)
    ends = [i for i in intents if i.template == "liveactivity" and i.data["live_event"] == "end"]
    assert "dismissal-date" in json.loads(ends[0].data["liveactivity"])
    assert {i.segments for i in intents if i.template == "liveactivity"} == {("live:espn:401559281",)}


async def test_a_live_update_the_broker_did_not_confirm_goes_with_the_next_poll_once(
    bus: Bus, settings: Settings, redis
) -> None:
    await bus.start([Keys(settings.namespace).intent_queue])
    refusing = RefusingBus(bus, lambda body: b'"template":"liveactivity"' in body and b'"kind":"GOAL"' in body)
    ingestor = Ingestor(on(settings), refusing, redis)
    await ingestor.absorb(Parsed(states=[hockey(0, status=GameStatus.SCHEDULED)]), diff=True, now=T0)
    await ingestor.absorb(Parsed(states=[hockey(10)]), diff=True, now=T0 + timedelta(seconds=10))
    scored = hockey(20, home_score=1)
    with pytest.raises(PublishNotConfirmed):
        await ingestor.absorb(Parsed(states=[scored]), diff=True, now=T0 + timedelta(seconds=20))
    retry = await ingestor.absorb(Parsed(states=[hockey(25, home_score=1)]), diff=True, now=T0 + timedelta(seconds=25))
    assert [(i.kind, i.priority) for i in retry.live] == [(EventKind.GOAL, 9)]  # still the goal, not a tick
    again = await ingestor.absorb(Parsed(states=[hockey(30, home_score=1)]), diff=True, now=T0 + timedelta(seconds=30))
    assert again.live == []
    intents = await published(bus, settings, at_least=3)
    assert live(intents) == [("start", EventKind.GAME_START, 9), ("update", EventKind.GOAL, 9)]
    assert [i.kind for i in intents if i.template != "liveactivity"].count(EventKind.GOAL) == 1


async def test_with_live_activities_off_the_stage_publishes_only_alerts(bus: Bus, settings: Settings, redis) -> None:
    assert settings.live_activities is False  # the default
    parts = Parts.build(settings, bus=bus)
    try:
        stage = IngestStage(parts, feeds=False)
        await stage.start()
        await stage.absorb(Parsed(states=[hockey(0, status=GameStatus.SCHEDULED)]), diff=True)
        await stage.absorb(Parsed(states=[hockey(10)]), diff=True)
        done = await stage.absorb(Parsed(states=[hockey(20, home_score=1)]), diff=True)
        await stage.stop()
        assert done.live == []
        assert stage.summary.live_intents == 0
        intents = await published(bus, settings, at_least=stage.summary.intents)
        assert stage.summary.intents >= 1
        assert [i for i in intents if i.template == "liveactivity"] == []
    finally:
        await parts.aclose()


async def test_the_stage_counts_what_it_published_with_live_activities_on(bus: Bus, settings: Settings, redis) -> None:
    parts = Parts.build(on(settings), bus=bus)
    try:
        stage = IngestStage(parts, feeds=False)
        await stage.start()
        await stage.absorb(Parsed(states=[hockey(0, status=GameStatus.SCHEDULED)]), diff=True)
        await stage.absorb(Parsed(states=[hockey(10)]), diff=True)
        await stage.absorb(Parsed(states=[hockey(20, home_score=1)]), diff=True)
        await stage.stop()
        assert stage.summary.live_intents == 2
        intents = await published(bus, settings, at_least=stage.summary.intents + 2)
        assert live(intents) == [("start", EventKind.GAME_START, 9), ("update", EventKind.GOAL, 9)]
    finally:
        await parts.aclose()


async def test_an_update_that_cannot_be_built_holds_back_only_its_own_game(
    bus: Bus, settings: Settings, redis, monkeypatch
) -> None:
    await bus.start([Keys(settings.namespace).intent_queue])
    ingestor = Ingestor(on(settings), bus, redis)
    pit, edm = "401559281", "401559282"

    def poll(second: float, score: int) -> Parsed:
        return Parsed(states=[hockey(second, home_score=score), hockey(second, game_id=edm, home_score=score)])

    await ingestor.absorb(poll(0, 0), diff=True, now=T0)
    broken = {pit}

    def flaky(state: GameState, *args: Any, **kwargs: Any) -> Intent:
        if state.game_id in broken:
            broken.discard(state.game_id)
            raise ValueError("no payload fits")
        return live_intent(state, *args, **kwargs)

    monkeypatch.setattr("goalhorn.ingest.ingestor.live_intent", flaky)
    with pytest.raises(ValueError, match="no payload fits"):
        await ingestor.absorb(poll(10, 1), diff=True, now=T0 + timedelta(seconds=10))
    retry = await ingestor.absorb(poll(15, 1), diff=True, now=T0 + timedelta(seconds=15))
    assert [(i.game_id, i.kind) for i in retry.live] == [(f"espn:{pit}", EventKind.GOAL)]
    intents = [i for i in await published(bus, settings, at_least=4) if i.template == "liveactivity"]
    assert sorted((i.game_id, i.kind.value) for i in intents) == [
        (f"espn:{pit}", "GAME_START"),
        (f"espn:{pit}", "GOAL"),
        (f"espn:{edm}", "GAME_START"),
        (f"espn:{edm}", "GOAL"),
    ]
