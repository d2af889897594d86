"""Review of the ingest side of Live Activities (issue 15): a claimed state whose intent never got out
is claimed again, whatever stopped its publish.

``IngestStage.stop`` cancels the poll tasks; a task cancelled while its Live Activity intent waits for
the broker's confirm leaves the pacing claim recorded in Redis (``release`` runs for an ``Exception``
only, and ``CancelledError`` is none). The state then counts as published: a start is never sent
(nobody's phone gets the ticker), an end never (every activity keeps showing the game live).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta

import pytest

from goalhorn.bus import Bus, Handler, Subscription
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.ingestor import Ingestor
from goalhorn.intents.live_pacing import PENDING_S
from goalhorn.keys import Keys
from goalhorn.models import EventKind, GameStatus
from goalhorn.settings import Settings
from tests.queues import published
from tests.test_liveactivity_ingest import T0, hockey, live, on

pytestmark = pytest.mark.timeout(60)


class UnconfirmedBus(Bus):
    """A real bus whose broker has not confirmed the publishes ``stall`` picks yet when the stage stops."""

    def __init__(self, inner: Bus, stall: bytes) -> None:
        self.inner = inner
        self.stall = stall
        self.waiting = asyncio.Event()

    async def start(self, queues: Iterable[str]) -> None:
        await self.inner.start(queues)

    async def publish(
        self, queue: str, body: bytes, *, priority: int = 0, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        if self.stall in body:
            self.waiting.set()
            await asyncio.Event().wait()  # the confirm that does not come before the stop
        await self.inner.publish(queue, body, priority=priority, message_id=message_id, headers=headers)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        return await self.inner.consume(queue, handler, prefetch=prefetch)

    async def depth(self, queue: str) -> int:
        return await self.inner.depth(queue)

    async def purge(self, queue: str) -> int:
        return await self.inner.purge(queue)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("event", ["start", "end"])
async def test_a_live_update_cancelled_before_its_confirm_is_published_after_the_restart(
    bus: Bus, settings: Settings, redis, event: str
) -> None:
    await bus.start([Keys(settings.namespace).intent_queue])
    stalling = UnconfirmedBus(bus, f'"live_event":"{event}"'.encode())
    first = Ingestor(on(settings), stalling, redis)
    await first.absorb(Parsed(states=[hockey(0, status=GameStatus.SCHEDULED)]), diff=True, now=T0)
    if event == "end":
        await first.absorb(Parsed(states=[hockey(10)]), diff=True, now=T0 + timedelta(seconds=10))
    changed = hockey(20) if event == "start" else hockey(3600, status=GameStatus.FINAL, period=3)
    poll = asyncio.create_task(first.absorb(Parsed(states=[changed]), diff=True, now=changed.observed_at))
    await asyncio.wait_for(stalling.waiting.wait(), 10)
    poll.cancel()  # IngestStage.stop
    with pytest.raises(asyncio.CancelledError):
        await poll
    restarted = Ingestor(on(settings), bus, redis)
    later = changed.model_copy(update={"observed_at": changed.observed_at + timedelta(seconds=5)})
    done = await restarted.absorb(Parsed(states=[later]), diff=True, now=later.observed_at)
    assert [i.data["live_event"] for i in done.live] == [event], f"the {event} was never published"
    intents = await published(bus, settings, at_least=1 if event == "start" else 2)
    kinds = [kind for _, kind, _ in live(intents)]
    assert kinds[-1] is (EventKind.GAME_START if event == "start" else EventKind.GAME_END)


@pytest.mark.parametrize("event", ["start", "end"])
async def test_a_live_update_whose_process_died_before_its_confirm_is_published_by_another(
    bus: Bus, settings: Settings, redis, event: str
) -> None:
    """``kill -9`` between the pacing claim and the broker's confirm: no confirm, no release. Another
    ingest process (or the restarted one) publishes the start or end once ``PENDING_S`` has passed,
    and not before (the first might only be slow)."""
    await bus.start([Keys(settings.namespace).intent_queue])
    stalling = UnconfirmedBus(bus, f'"live_event":"{event}"'.encode())
    first = Ingestor(on(settings), stalling, redis)
    await first.absorb(Parsed(states=[hockey(0, status=GameStatus.SCHEDULED)]), diff=True, now=T0)
    if event == "end":
        await first.absorb(Parsed(states=[hockey(10)]), diff=True, now=T0 + timedelta(seconds=10))
    changed = hockey(20) if event == "start" else hockey(3600, status=GameStatus.FINAL, period=3)
    poll = asyncio.create_task(first.absorb(Parsed(states=[changed]), diff=True, now=changed.observed_at))
    try:
        await asyncio.wait_for(stalling.waiting.wait(), 10)  # claimed, publishing: the process is killed here
        second = Ingestor(on(settings), bus, redis)
        soon = changed.model_copy(update={"observed_at": changed.observed_at + timedelta(seconds=5)})
        early = await second.absorb(Parsed(states=[soon]), diff=True, now=soon.observed_at)
        assert [i.data["live_event"] for i in early.live] == [], "published twice while the first was in flight"
        late = soon.model_copy(update={"observed_at": changed.observed_at + timedelta(seconds=PENDING_S)})
        done = await second.absorb(Parsed(states=[late]), diff=True, now=late.observed_at)
        assert [i.data["live_event"] for i in done.live] == [event], f"the {event} was never published"
        intents = await published(bus, settings, at_least=1 if event == "start" else 2)
        kinds = [kind for _, kind, _ in live(intents)]
        assert kinds[-1] is (EventKind.GAME_START if event == "start" else EventKind.GAME_END)
        again = late.model_copy(update={"observed_at": late.observed_at + timedelta(seconds=2 * PENDING_S)})
        settled = await second.absorb(Parsed(states=[again]), diff=True, now=again.observed_at)
        assert [i.data["live_event"] for i in settled.live if i.data["live_event"] == event] == []  # confirmed: once
    finally:
        poll.cancel()  # the test's end: the dead process's task goes
        with pytest.raises(asyncio.CancelledError):
            await poll
