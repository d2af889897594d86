"""Ingest against a RabbitMQ that refuses connections (cut with a TCP proxy): a goal and an edge signal
whose publish failed during the outage are published on the next poll once the broker is back, each
once; nothing is taken as sent before the broker confirmed it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from goalhorn.bus import BusMessage
from goalhorn.bus.rabbitmq import RabbitBus
from goalhorn.errors import BusError
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.fusion import EdgeEngine, EdgeOptions
from goalhorn.ingest.ingestor import Ingestor
from goalhorn.ingest.markets import MarketMap
from goalhorn.ingest.winprob import WinModel
from goalhorn.keys import Keys
from goalhorn.models import BookUpdate, EventKind, GameStatus, Intent, Sport, utcnow
from goalhorn.redis_client import make_redis
from tests.conftest import make_settings
from tests.support.builders import game_state
from tests.tcpproxy import TCPProxy

pytestmark = [pytest.mark.real, pytest.mark.timeout(60)]


async def take_intents(bus: RabbitBus, queue: str, at_least: int) -> list[Intent]:
    """Every intent on the queue (acked), waiting for ``at_least`` and a moment longer for strays."""
    seen: list[BusMessage] = []

    async def handler(message: BusMessage) -> None:
        seen.append(message)

    subscription = await bus.consume(queue, handler, prefetch=32)
    try:
        async with asyncio.timeout(15):
            while len(seen) < at_least:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
    finally:
        await subscription.cancel()
    return [Intent.from_json(m.body) for m in seen]


async def test_a_goal_and_an_edge_whose_publish_failed_in_an_outage_go_out_on_the_next_poll() -> None:
    proxy = TCPProxy()
    await proxy.start()
    settings = make_settings("real", publish_timeout_s=1.0, reconnect_max_delay_s=0.2)
    cut = settings.model_copy(update={"amqp_url": proxy.url()})
    queue = Keys(settings.namespace).intent_queue
    markets = MarketMap.from_yaml('markets: [{token_id: "111", game: "espn:g1", side: home}]')
    engine = EdgeEngine(markets, WinModel(), EdgeOptions(min_edge_cents=3.0))
    bus, redis = RabbitBus(cut), make_redis(settings)
    try:
        await bus.start([queue])
        ingestor = Ingestor(cut, bus, redis, engine=engine)
        t0 = utcnow()

        def state(home: int, seconds: float):
            at = t0 + timedelta(seconds=seconds)
            return game_state("g1", GameStatus.LIVE, observed_at=at, sport=Sport.HOCKEY, home=home)

        first = await ingestor.absorb(Parsed(states=[state(0, 0)]), diff=True, now=t0)
        assert first.intents == []
        await proxy.drop(refuse=True)
        book = BookUpdate(token_id="111", best_ask=0.30, ts_ms=1, received_at=t0)
        with pytest.raises(BusError):  # an edge, from the market stream, while the broker is down
            await ingestor.absorb(Parsed(books=[book]), diff=False, now=t0)
        proxy.accept()
        # The next poll, nothing changed: the edge that never went out is made again, not taken as a repeat.
        edge = await ingestor.absorb(Parsed(states=[state(0, 1)]), diff=True, now=t0 + timedelta(seconds=1))
        assert [i.kind for i in edge.intents] == [EventKind.EDGE]

        await proxy.drop(refuse=True)
        with pytest.raises(BusError):  # a goal from a poll, while the broker is down
            await ingestor.absorb(Parsed(states=[state(1, 2)]), diff=True, now=t0 + timedelta(seconds=2))
        proxy.accept()
        retry = await ingestor.absorb(Parsed(states=[state(1, 3)]), diff=True, now=t0 + timedelta(seconds=3))
        assert [e.kind for e in retry.events] == [EventKind.GOAL]
        again = await ingestor.absorb(Parsed(states=[state(1, 4)]), diff=True, now=t0 + timedelta(seconds=4))
        assert (again.events, again.signals) == ([], [])  # sent now: neither is made again

        taken = await take_intents(bus, queue, at_least=len(edge.intents) + len(retry.intents))
        assert len({i.intent_id for i in taken}) == len(taken)
        assert sorted(i.intent_id for i in taken) == sorted(i.intent_id for i in edge.intents + retry.intents)
        assert {i.event_id for i in taken if i.kind is EventKind.GOAL} == {retry.events[0].event_id}
    finally:
        await bus.aclose()
        await proxy.aclose()
        await redis.aclose()
