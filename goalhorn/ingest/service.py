"""``goalhorn ingest`` as a library call: pollers and the market stream, configured by settings.

Every ``<sport>/<league>`` of ``GOALHORN_ESPN_LEAGUES`` gets a :class:`LeaguePoller` (all sharing
one request budget for ESPN), and the tokens of the market map (``GOALHORN_MARKET_MAP_PATH``) one
:class:`MarketStream`; whatever they parse goes through one :class:`Ingestor` to live state and the
intent bus. Every rejected payload is kept in one quarantine, mirrored to a capped Redis list
(``goalhorn feeds quarantine`` shows it). Runs until cancelled, or for ``duration_s``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from redis.exceptions import RedisError

from goalhorn.errors import ConfigError
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.budget import RequestBudget
from goalhorn.ingest.fusion import EdgeEngine, EdgeOptions
from goalhorn.ingest.ingestor import Ingestor
from goalhorn.ingest.market_stream import MarketStream, StreamOptions
from goalhorn.ingest.markets import MarketMap
from goalhorn.ingest.poller import LeaguePoller, PollOptions
from goalhorn.ingest.polymarket import PolymarketAdapter
from goalhorn.ingest.quarantine import Quarantine, QuarantinedPayload, QuarantineStore
from goalhorn.ingest.winprob import ParamTable, WinModel
from goalhorn.intents.bus import Bus, make_bus
from goalhorn.keys import Keys
from goalhorn.models import Sport
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
MIRROR_BACKLOG = 1000
"""Rejections waiting to be mirrored to Redis beyond this are not mirrored (they are still counted)."""


@dataclass(slots=True)
class IngestSummary:
    polls: int = 0
    poll_failures: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    states_written: int = 0
    events: int = 0
    signals: int = 0
    intents: int = 0
    rejected: int = 0


def leagues_of(settings: Settings) -> list[tuple[Sport, str]]:
    """``GOALHORN_ESPN_LEAGUES`` as (sport, league) pairs; a ``ConfigError`` names a bad entry."""
    found = []
    for entry in filter(None, (e.strip() for e in settings.espn_leagues.split(","))):
        sport, _, league = entry.partition("/")
        try:
            found.append((Sport(sport), league))
        except ValueError:
            raise ConfigError(f"GOALHORN_ESPN_LEAGUES: {entry!r} is not <sport>/<league>") from None
        if not league or "/" in league:
            raise ConfigError(f"GOALHORN_ESPN_LEAGUES: {entry!r} is not <sport>/<league>")
    return found


async def run_ingest(settings: Settings, *, bus: Bus | None = None, duration_s: float | None = None) -> IngestSummary:
    leagues = leagues_of(settings)
    markets = MarketMap.load(Path(settings.market_map_path)) if settings.market_map_path else None
    if not leagues and not markets:
        raise ConfigError("nothing to ingest: set GOALHORN_ESPN_LEAGUES and/or GOALHORN_MARKET_MAP_PATH")
    model = WinModel(ParamTable.load(Path(settings.wp_params_path) if settings.wp_params_path else None))
    engine = None
    if markets:
        options = EdgeOptions(settings.edge_min_cents, settings.edge_max_book_age_s, settings.edge_max_state_age_s)
        engine = EdgeEngine(markets, model, options)
    own_bus = bus is None
    bus = bus or make_bus(settings)
    await bus.start([Keys(settings.namespace).intent_queue])
    redis = make_redis(settings)
    ingestor = Ingestor(settings, bus, redis, engine=engine)
    summary = IngestSummary()
    store = QuarantineStore(redis, Keys(settings.namespace))
    pending: asyncio.Queue[QuarantinedPayload | None] = asyncio.Queue()

    def mirror(item: QuarantinedPayload) -> None:
        if pending.qsize() < MIRROR_BACKLOG:
            pending.put_nowait(item)

    async def write_quarantine() -> None:
        """Mirror rejections to Redis until told to stop (``None``), then write what is left."""
        while True:
            batch = [await pending.get()]
            while not pending.empty():
                batch.append(pending.get_nowait())
            items = [item for item in batch if item is not None]
            try:
                await store.push(items)
            except RedisError:
                log.exception("could not mirror %d rejected payloads to Redis", len(items))
            if len(items) < len(batch):
                return

    quarantine = Quarantine(on_record=mirror)

    async def absorb(parsed: Parsed, *, diff: bool) -> None:
        done = await ingestor.absorb(parsed, diff=diff)
        summary.states_written += done.states_written
        summary.events += len(done.events)
        summary.signals += len(done.signals)
        summary.intents += len(done.intents)

    async def polled(parsed: Parsed) -> None:
        await absorb(parsed, diff=True)

    async def streamed(parsed: Parsed) -> None:
        await absorb(parsed, diff=False)

    poll_options = PollOptions(
        fast_s=settings.poll_fast_s,
        slow_s=settings.poll_slow_s,
        timeout_s=settings.poll_timeout_s,
        backoff_base_s=settings.poll_backoff_base_s,
        backoff_cap_s=max(settings.poll_backoff_max_s, settings.poll_backoff_base_s),
    )
    async with aiohttp.ClientSession() as session:
        budget = RequestBudget("espn", settings.espn_budget_requests, settings.espn_budget_window_s)
        pollers = [
            LeaguePoller(
                session,
                settings.espn_base_url,
                sport,
                league,
                budget,
                polled,
                options=poll_options,
                quarantine=quarantine,
            )
            for sport, league in leagues
        ]
        stream = None
        if markets and markets.tokens:
            stream_options = StreamOptions(ping_s=settings.market_ping_s, silence_s=settings.market_silence_s)
            adapter = PolymarketAdapter(quarantine)
            stream = MarketStream(
                session, settings.polymarket_ws_url, markets.tokens, streamed, adapter=adapter, options=stream_options
            )
        writer = asyncio.create_task(write_quarantine())
        tasks = [asyncio.create_task(p.run()) for p in pollers]
        if stream is not None:
            tasks.append(asyncio.create_task(stream.run()))
        try:
            if duration_s is None:
                await asyncio.gather(*tasks)
            else:
                await asyncio.sleep(duration_s)
        finally:
            for task in tasks:
                task.cancel()
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            if stuck:
                log.error("%d ingest tasks did not stop within %gs", len(stuck), STOP_TIMEOUT_S)
            pending.put_nowait(None)
            await writer
            if own_bus:
                await bus.aclose()
            await redis.aclose()
    summary.polls = sum(p.polls for p in pollers)
    for poller in pollers:
        for reason, count in poller.failures.items():
            summary.poll_failures[reason] = summary.poll_failures.get(reason, 0) + count
    summary.connections = stream.connections if stream is not None else 0
    summary.rejected = quarantine.total
    return summary
