"""Score updates and edge signals as bounded Redis streams, fanned out to server-sent-event clients.

Ingest appends (:class:`UpdatePublisher`): a game's state when its score, status or period changed,
and every edge signal, each stream capped near ``STREAM_MAXLEN`` entries (``XADD MAXLEN ~``), so
Redis memory is bounded and a client reconnecting with ``Last-Event-ID`` gets what it missed as long
as it is still within the cap (``XRANGE`` from that id). It also keeps each game's last events, for
``GET /v1/games/{id}/events``.

Each API process reads each stream once (:class:`StreamHub`: one ``XREAD BLOCK`` loop, started by
the first subscriber, stopped by the last) and hands entries to its subscribers' queues. A queue
holds at most ``CLIENT_BUFFER`` entries: a client that does not keep up is dropped (its stream
ends; it may reconnect with ``Last-Event-ID``), never allowed to hold more memory or slow the
others, whom the hub serves without waiting for anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from goalhorn.keys import Keys
from goalhorn.models import EdgeSignal, GameEvent, GameState
from goalhorn.redis_client import Redis

log = logging.getLogger(__name__)
STREAM_MAXLEN = 10_000
EVENTS_PER_GAME = 500
EVENTS_TTL_S = 48 * 3600
CLIENT_BUFFER = 256
BLOCK_MS = 5_000
BACKLOG_PAGE = 500


def game_key(state: GameState) -> str:
    return f"{state.source}:{state.game_id}"


class UpdatePublisher:
    """Appends score updates and edge signals to their streams (one per ingest process)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._last: dict[str, tuple[int, int, str, int]] = {}

    async def publish(
        self, states: Sequence[GameState], signals: Sequence[EdgeSignal] = (), events: Sequence[GameEvent] = ()
    ) -> int:
        """Append the states that changed score, status or period since this publisher last saw
        their game, and the signals; and each event to its game's list (the last ``EVENTS_PER_GAME``,
        kept ``EVENTS_TTL_S`` after the last one). How many stream entries were appended."""
        pipe = self._redis.pipeline(transaction=False)
        appended = 0
        for event in events:
            key = self._keys.game_events(f"{event.source}:{event.game_id}")
            pipe.rpush(key, event.model_dump_json())
            pipe.ltrim(key, -EVENTS_PER_GAME, -1)
            pipe.expire(key, EVENTS_TTL_S)
        for state in states:
            key = game_key(state)
            mark = (state.home_score, state.away_score, state.status.value, state.period)
            if self._last.get(key) == mark:
                continue
            self._last[key] = mark
            fields = {"game": key, "data": state.model_dump_json()}
            pipe.xadd(self._keys.score_updates(), fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
            appended += 1
        for signal in signals:
            fields = {"game": signal.game_id, "data": signal.model_dump_json()}
            pipe.xadd(self._keys.edge_signals(), fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
            appended += 1
        if appended or events:
            await pipe.execute()
        return appended


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    game: str
    data: str


def _entry(entry_id: bytes | str, fields: dict[Any, Any]) -> Entry:
    def text(value: bytes | str) -> str:
        return value.decode() if isinstance(value, bytes) else value

    named = {text(k): text(v) for k, v in fields.items()}
    return Entry(text(entry_id), named.get("game", ""), named.get("data", "{}"))


GAP = Entry("", "", "")
"""Entries after the client's ``Last-Event-ID`` may have been trimmed from the stream."""


def _after(entry_id: str) -> str:
    """The smallest stream id after ``entry_id`` (XRANGE's exclusive start)."""
    return "(" + entry_id


@dataclass(eq=False)
class Subscriber:
    games: frozenset[str] | None
    queue: asyncio.Queue[Entry] = field(default_factory=lambda: asyncio.Queue(CLIENT_BUFFER))
    """Entries handed over but not yet sent; a full queue means the client lags: it is dropped."""
    dropped: bool = False

    def wants(self, entry: Entry) -> bool:
        return self.games is None or entry.game in self.games


class StreamHub:
    """One process's reader of one stream, fanning entries out to its subscribers."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._reading = asyncio.Event()
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _last_id(self) -> str:
        last = cast(list[Any], await self._redis.xrevrange(self._key, count=1))
        return _entry(last[0][0], last[0][1]).id if last else "0-0"

    async def _run(self) -> None:
        try:
            position = await self._last_id()
        finally:
            self._reading.set()
        while self._subscribers:
            try:
                # A read is a quarter of a client's buffer, and the loop yields between reads, so a burst
                # does not overrun clients that keep up; only one that lags a whole buffer is dropped.
                batch = max(1, CLIENT_BUFFER // 4)
                answer = cast(list[Any], await self._redis.xread({self._key: position}, count=batch, block=BLOCK_MS))
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: subscribers keep waiting (heartbeats flow); try again
                log.warning("reading %s failed; retrying", self._key, exc_info=True)
                await asyncio.sleep(1.0)
                continue
            for _, entries in answer:
                for entry_id, fields in entries:
                    entry = _entry(entry_id, fields)
                    position = entry.id
                    self._deliver(entry)
            await asyncio.sleep(0)

    def _deliver(self, entry: Entry) -> None:
        for subscriber in list(self._subscribers):
            if subscriber.dropped or not subscriber.wants(entry):
                continue
            try:
                subscriber.queue.put_nowait(entry)
            except asyncio.QueueFull:
                subscriber.dropped = True
                self.dropped += 1
                self._subscribers.discard(subscriber)
                with contextlib.suppress(asyncio.QueueFull):  # wake it so it sees it was dropped
                    subscriber.queue.get_nowait()
                    subscriber.queue.put_nowait(GAP)

    async def subscribe(self, games: Iterable[str] | None, last_event_id: str | None) -> AsyncIterator[Entry]:
        """Entries after ``last_event_id`` (those still in the stream), then new ones as they come; ends
        when the subscriber falls ``CLIENT_BUFFER`` entries behind. When entries after
        ``last_event_id`` were trimmed already, a ``GAP`` entry comes first: refetch the state."""
        subscriber = Subscriber(frozenset(games) if games is not None else None)
        self._subscribers.add(subscriber)
        try:
            if self._task is None or self._task.done():
                self._reading = asyncio.Event()
                self._task = asyncio.create_task(self._run())  # one reader, however many subscribe at once
            # Once the reader has its position, the backlog read next reaches past it: no entry is missed.
            await self._reading.wait()
            if self._task.done():
                return  # the reader could not start (Redis away): the client reconnects later
            seen = ""
            if last_event_id:
                oldest = cast(list[Any], await self._redis.xrange(self._key, count=1))
                if oldest and _id_key(_entry(oldest[0][0], oldest[0][1]).id) > _id_key(last_event_id):
                    yield GAP
                async for entry in self._backlog(last_event_id):
                    seen = entry.id
                    if subscriber.wants(entry):
                        yield entry
            while True:
                entry = await subscriber.queue.get()
                if subscriber.dropped:
                    return
                if seen and _id_key(entry.id) <= _id_key(seen):
                    continue  # already sent from the backlog
                yield entry
        finally:
            self._subscribers.discard(subscriber)

    async def _backlog(self, last_event_id: str) -> AsyncIterator[Entry]:
        start = _after(last_event_id)
        while True:
            page = cast(list[Any], await self._redis.xrange(self._key, min=start, count=BACKLOG_PAGE))
            for entry_id, fields in page:
                entry = _entry(entry_id, fields)
                start = _after(entry.id)
                yield entry
            if len(page) < BACKLOG_PAGE:
                return

    async def aclose(self) -> None:
        self._subscribers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def valid_id(entry_id: str) -> bool:
    ms, _, seq = entry_id.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit()) and len(entry_id) <= 41
