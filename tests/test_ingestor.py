"""Ingestor: an event counts as done only once the broker confirmed its intents; a failed attempt is
derived again from the next poll and published then, exactly once overall, on both backends."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from goalhorn.bus import Bus, Handler, Subscription
from goalhorn.errors import PublishNotConfirmed
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.budget import RequestBudget
from goalhorn.ingest.dedup import EventDedup
from goalhorn.ingest.events import GameDiffer
from goalhorn.ingest.ingestor import Ingestor
from goalhorn.ingest.live import LiveState
from goalhorn.ingest.poller import LeaguePoller, PollOptions
from goalhorn.intents.rules import intents_for as build
from goalhorn.keys import Keys
from goalhorn.models import EventKind, GameState, GameStatus, Intent, Sport
from goalhorn.settings import Settings
from tests.feeds import fixture
from tests.httpserver import Script, body, serve
from tests.queues import published

pytestmark = pytest.mark.timeout(60)
T0 = datetime(2026, 5, 2, 23, 0, tzinfo=UTC)


class FlakyBus(Bus):
    """A real bus whose first ``failures`` publishes are not confirmed."""

    def __init__(self, inner: Bus, failures: int = 1) -> None:
        self.inner = inner
        self.failures = failures
        self.attempts: list[str] = []

    async def start(self, queues: Iterable[str]) -> None:
        await self.inner.start(queues)

    async def publish(
        self, queue: str, body: bytes, *, priority: int = 0, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        self.attempts.append(message_id)
        if self.failures > 0:
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


def hockey(game_id: str = "g1", minute: int = 0, **changes: Any) -> GameState:
    values: dict[str, Any] = {
        "game_id": game_id,
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
        "observed_at": T0 + timedelta(minutes=minute),
    }
    return GameState(**(values | changes))


def goals(intents: list[Intent]) -> list[tuple[str, str, str]]:
    return [(i.game_id, i.data["home_score"], i.data["away_score"]) for i in intents if i.kind is EventKind.GOAL]


async def test_a_goal_whose_publish_failed_is_published_on_the_next_poll_exactly_once(
    bus: Bus, settings: Settings, redis
) -> None:
    await bus.start([Keys(settings.namespace).intent_queue])
    flaky = FlakyBus(bus)
    ingestor = Ingestor(settings, flaky, redis)
    assert (await ingestor.absorb(Parsed(states=[hockey()]), diff=True)).events == []
    scored = hockey(minute=1, home_score=1)
    with pytest.raises(PublishNotConfirmed):
        await ingestor.absorb(Parsed(states=[scored]), diff=True)
    live = LiveState(redis, Keys(settings.namespace), retention_s=60)
    kept = await live.get("espn:g1")
    assert kept is not None
    assert kept.state.home_score == 0  # not stored as if it had been alerted

    retry = await ingestor.absorb(Parsed(states=[hockey(minute=2, home_score=1)]), diff=True)
    assert [e.kind for e in retry.events] == [EventKind.GOAL]
    assert retry.duplicates == 0
    again = await ingestor.absorb(Parsed(states=[hockey(minute=3, home_score=1)]), diff=True)
    assert (again.events, again.duplicates) == ([], 0)

    assert goals(await published(bus, settings, at_least=1)) == [("g1", "1", "0")]
    assert flaky.attempts == [retry.intents[0].intent_id] * 2  # the retry reuses the intent id
    kept = await live.get("espn:g1")
    assert kept is not None
    assert kept.state.home_score == 1


async def test_a_rule_that_fails_to_build_once_holds_back_only_its_own_game(
    bus: Bus, settings: Settings, redis, monkeypatch
) -> None:
    await bus.start([Keys(settings.namespace).intent_queue])
    ingestor = Ingestor(settings, bus, redis)
    broken = ["g1"]

    def intents_for(event, rules, now, extra=None):
        if event.game_id in broken:
            broken.remove(event.game_id)
            raise KeyError("template field")
        return build(event, rules, now, extra)

    monkeypatch.setattr("goalhorn.ingest.ingestor.intents_for", intents_for)
    await ingestor.absorb(Parsed(states=[hockey("g1"), hockey("g2")]), diff=True)
    both = [hockey("g1", 1, home_score=1), hockey("g2", 1, away_score=1)]
    with pytest.raises(KeyError):
        await ingestor.absorb(Parsed(states=both), diff=True)
    retry = await ingestor.absorb(
        Parsed(states=[hockey("g1", 2, home_score=1), hockey("g2", 2, away_score=1)]), diff=True
    )
    assert [e.game_id for e in retry.events] == ["g1"]
    assert retry.duplicates == 0  # g2's goal was kept as done, and its game moved on with it

    assert sorted(goals(await published(bus, settings, at_least=2))) == [("g1", "1", "0"), ("g2", "0", "1")]


async def test_an_event_another_attempt_holds_is_left_for_later_not_dropped(
    bus: Bus, settings: Settings, redis
) -> None:
    await bus.start([Keys(settings.namespace).intent_queue])
    ingestor = Ingestor(settings, bus, redis)
    await ingestor.absorb(Parsed(states=[hockey()]), diff=True)
    other = EventDedup(redis, Keys(settings.namespace), ttl_s=3600, lease_s=1)
    (goal,) = ingestor.differ.diff(hockey(minute=1, home_score=1)).events
    assert (await other.claim([goal])).claimed == [goal]  # another process, about to die

    held = await ingestor.absorb(Parsed(states=[hockey(minute=1, home_score=1)]), diff=True)
    assert (held.events, held.duplicates, held.held) == ([], 0, 1)
    await asyncio.sleep(1.1)  # its lease runs out
    taken = await ingestor.absorb(Parsed(states=[hockey(minute=2, home_score=1)]), diff=True)
    assert [e.event_id for e in taken.events] == [goal.event_id]
    assert (await EventDedup(redis, Keys(settings.namespace), ttl_s=3600).claim([goal])).done == [goal]
    assert goals(await published(bus, settings, at_least=1)) == [("g1", "1", "0")]


async def test_claims_are_done_only_when_marked_and_taken_back_by_their_own_process(settings: Settings, redis) -> None:
    keys = Keys(settings.namespace)
    ours, theirs = EventDedup(redis, keys, ttl_s=3600), EventDedup(redis, keys, ttl_s=3600)
    differ = GameDiffer()
    differ.update(hockey())
    (goal,) = differ.update(hockey(minute=1, home_score=1))

    first = await ours.claim([goal, goal])
    assert (first.claimed, first.done) == ([goal], [goal])  # a repeat within one batch is a duplicate
    assert (await ours.claim([goal])).held == [goal]  # still in flight here
    assert (await theirs.claim([goal])).held == [goal]
    ours.release([goal])  # the attempt failed
    assert (await ours.claim([goal])).claimed == [goal]  # taken back at once, lease restarted
    await ours.mark_done([goal])
    ours.release([goal])
    assert (await theirs.claim([goal])).done == [goal]
    assert (await ours.claim([goal])).done == [goal]
    await redis.set(keys.event_seen("legacy"), b"1")
    legacy = goal.model_copy(update={"event_id": "legacy"})
    assert (await theirs.claim([legacy])).done == [legacy]  # keys from before the two states


async def test_the_poller_counts_a_failed_publish_and_the_next_poll_publishes_the_goal(
    bus: Bus, settings: Settings, redis
) -> None:
    await bus.start([Keys(settings.namespace).intent_queue])
    flaky = FlakyBus(bus)
    ingestor = Ingestor(settings, flaky, redis)
    board = json.loads(fixture("espn/nhl_scoreboard.json"))
    before = json.dumps(board).encode()
    game = next(e for e in board["events"] if e["id"] == "401461456")  # ARI 1 - 3 ANA, third period
    home = next(c for c in game["competitions"][0]["competitors"] if c["homeAway"] == "home")
    home["score"] = "2"
    after = json.dumps(board).encode()
    script = Script([body(before), body(after)])

    async def on_parsed(parsed: Parsed) -> None:
        await ingestor.absorb(parsed, diff=True)

    options = PollOptions(fast_s=5, slow_s=30, timeout_s=5, backoff_base_s=1, backoff_cap_s=8)
    async with serve(script.app()) as url, aiohttp.ClientSession() as session:
        poller = LeaguePoller(
            session,
            url,
            Sport.HOCKEY,
            "nhl",
            RequestBudget("espn", 100, 60),
            on_parsed,
            options=options,
            rng=random.Random(1),
        )
        assert await poller.poll_once() == 5
        assert 0.5 <= await poller.poll_once() <= 1  # publish failed: backoff, not the 5 s interval
        assert poller.failures == {"publish": 1}
        assert await poller.poll_once() == 5
        assert await poller.poll_once() == 5
    assert poller.failures == {"publish": 1}
    assert goals(await published(bus, settings, at_least=1)) == [("401461456", "2", "3")]


def test_the_differ_keeps_a_change_only_once_it_is_committed() -> None:
    differ = GameDiffer()
    differ.update(hockey())
    first = differ.diff(hockey(minute=1, home_score=1))
    again = differ.diff(hockey(minute=2, home_score=1))
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events] == ["espn:g1:GOAL:16:1:p1"]
    assert differ.commit(again)
    assert not differ.commit(first)  # made from a state the game has moved on from: dropped
    assert differ.diff(hockey(minute=3, home_score=1)).events == []
