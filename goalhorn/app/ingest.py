"""The ingest stage: feeds in, live state and intents out.

``goalhorn run ingest`` runs it (one per feed set): an ESPN poller per ``<sport>/<league>`` of
``GOALHORN_ESPN_LEAGUES`` (all sharing one request budget), a Stats Perform MA3 poller per fixture
of ``GOALHORN_STATSPERFORM_MATCHES``, a Sportradar push stream per URL of
``GOALHORN_SPORTRADAR_FEEDS``, the Polymarket market channel for the tokens of
``GOALHORN_MARKET_MAP_PATH``, and with ``GOALHORN_FEEDS_LISTEN`` the endpoint providers push feeds
to. Whatever they parse goes through one :class:`Ingestor` to live state and the intent bus; every
rejected payload is kept in one quarantine, mirrored to a capped Redis list (``goalhorn feeds
quarantine``). The demo and the tests feed the same stage by hand (``absorb``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from redis.exceptions import RedisError

from goalhorn.app.parts import Parts
from goalhorn.bus import Bus
from goalhorn.errors import ConfigError
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.budget import RequestBudget
from goalhorn.ingest.fusion import EdgeEngine, EdgeOptions
from goalhorn.ingest.ingestor import Absorbed, Ingestor
from goalhorn.ingest.market_stream import MarketStream, StreamOptions
from goalhorn.ingest.markets import MarketMap
from goalhorn.ingest.poller import DocumentPoller, LeaguePoller, PollOptions
from goalhorn.ingest.polymarket import PolymarketAdapter
from goalhorn.ingest.push_stream import PushOptions, PushStream
from goalhorn.ingest.pushed import PushedFeeds, SourceSecret, parse_secrets
from goalhorn.ingest.quarantine import Quarantine, QuarantinedPayload, QuarantineStore
from goalhorn.ingest.sportradar import SportradarAdapter
from goalhorn.ingest.statsperform import StatsPerformAdapter, matchevent_url
from goalhorn.ingest.winprob import ParamTable, WinModel
from goalhorn.models import Sport
from goalhorn.settings import Settings
from goalhorn.sidecar.streams import UpdatePublisher

log = logging.getLogger(__name__)

NAME = "ingest"
STOP_TIMEOUT_S = 10.0
"""How long stopping waits for pollers and the market stream to finish what they hold."""
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
    live_intents: int = 0
    """Live Activity intents (``GOALHORN_LIVE_ACTIVITIES``), not in ``intents``."""
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


def push_feeds_of(settings: Settings) -> list[str]:
    """``GOALHORN_SPORTRADAR_FEEDS`` as URLs; a ``ConfigError`` names a bad one or a missing key."""
    urls = [u.strip() for u in settings.sportradar_feeds.split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("https://", "http://")) or any(c.isspace() for c in url):
            raise ConfigError(f"GOALHORN_SPORTRADAR_FEEDS: {url[:80]!r} is not an http(s) URL")
    if urls and (settings.sportradar_api_key is None or not settings.sportradar_api_key.get_secret_value()):
        raise ConfigError("GOALHORN_SPORTRADAR_API_KEY: needed to stream GOALHORN_SPORTRADAR_FEEDS")
    return urls


def endpoint_of(settings: Settings) -> tuple[str, int, dict[str, SourceSecret]] | None:
    """``GOALHORN_FEEDS_LISTEN`` and ``GOALHORN_FEEDS_SECRETS``: where pushed feeds are taken, and each
    source's secret; None without an endpoint. A ``ConfigError`` names the bad variable."""
    listen = settings.feeds_listen.strip()
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"GOALHORN_FEEDS_LISTEN: {listen[:80]!r} is not host:port")
    secrets = parse_secrets(settings.feeds_secrets.get_secret_value() if settings.feeds_secrets else "")
    if not secrets:
        raise ConfigError("GOALHORN_FEEDS_SECRETS: needed by GOALHORN_FEEDS_LISTEN (source=hmac:SECRET, ...)")
    return host, int(port), secrets


def matches_of(settings: Settings) -> list[str]:
    """``GOALHORN_STATSPERFORM_MATCHES`` as fixture ids; a ``ConfigError`` names a bad one or a missing key."""
    ids = [m.strip() for m in settings.statsperform_matches.split(",") if m.strip()]
    for fixture in ids:
        if not fixture.isalnum() or len(fixture) > 64:
            raise ConfigError(f"GOALHORN_STATSPERFORM_MATCHES: {fixture[:80]!r} is not a fixture id")
    key = settings.statsperform_outlet_key
    if ids and (key is None or not key.get_secret_value().isalnum()):
        raise ConfigError(
            "GOALHORN_STATSPERFORM_OUTLET_KEY: needed (letters and digits) by GOALHORN_STATSPERFORM_MATCHES"
        )
    return ids


NOTHING = (
    "nothing to ingest: set GOALHORN_ESPN_LEAGUES, GOALHORN_STATSPERFORM_MATCHES, GOALHORN_SPORTRADAR_FEEDS, "
    "GOALHORN_FEEDS_LISTEN and/or GOALHORN_MARKET_MAP_PATH"
)


def check_feeds(settings: Settings) -> None:
    """Refuse a configuration with nothing to ingest, a bad league or feed, before anything connects."""
    leagues_of(settings)
    pushed = push_feeds_of(settings)
    endpoint = endpoint_of(settings)
    matches = matches_of(settings)
    polled = settings.espn_leagues.strip() or matches
    if not polled and not pushed and not endpoint and not settings.market_map_path:
        raise ConfigError(NOTHING)


class IngestStage:
    """The ingestor, and with ``feeds`` the live clients settings configure feeding it."""

    name = NAME

    def __init__(self, parts: Parts, *, feeds: bool = True) -> None:
        settings = parts.settings
        self.parts = parts
        self.summary = IngestSummary()
        self.updates = UpdatePublisher(parts.redis, parts.keys)
        """Score changes, edge signals and game events for the API (``goalhorn.sidecar.streams``)."""
        self._feeds = feeds
        self._leagues = leagues_of(settings) if feeds else []
        self._markets = MarketMap.load(Path(settings.market_map_path)) if feeds and settings.market_map_path else None
        self._push_urls = push_feeds_of(settings) if feeds else []
        self._endpoint = endpoint_of(settings) if feeds else None
        self._matches = matches_of(settings) if feeds else []
        sources = (self._leagues, self._matches, self._push_urls, self._markets, self._endpoint)
        if feeds and not any(sources):
            raise ConfigError(NOTHING)
        engine = None
        if self._markets:
            model = WinModel(ParamTable.load(Path(settings.wp_params_path) if settings.wp_params_path else None))
            options = EdgeOptions(settings.edge_min_cents, settings.edge_max_book_age_s, settings.edge_max_state_age_s)
            engine = EdgeEngine(self._markets, model, options)
        self.ingestor = Ingestor(settings, parts.bus, parts.redis, engine=engine, catalog=parts.catalog)
        self.quarantine = Quarantine(on_record=self._mirror)
        self._pending: asyncio.Queue[QuarantinedPayload | None] = asyncio.Queue()
        self._pollers: list[DocumentPoller] = []
        self._stream: MarketStream | None = None
        self._pushes: list[PushStream] = []
        self.pushed: PushedFeeds | None = None
        self._site: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._started = False

    async def absorb(self, parsed: Parsed, *, diff: bool) -> Absorbed:
        """One adapter result to live state and the bus (``diff`` for polled feeds), counted."""
        done = await self.ingestor.absorb(parsed, diff=diff)
        try:
            await self.updates.publish(parsed.states, done.signals, done.events)
        except RedisError as exc:  # the streams are best effort: live state and intents went through
            log.warning("could not append to the API's update streams: %s", exc)
        self.summary.states_written += done.states_written
        self.summary.events += len(done.events)
        self.summary.signals += len(done.signals)
        self.summary.intents += len(done.intents)
        self.summary.live_intents += len(done.live)
        await self.parts.counters.add(
            {
                "events": len(done.events),
                "events_duplicate": done.duplicates,
                "events_held": done.held,
                "intents": len(done.intents),
                "live_intents": len(done.live),
                "feed_rejected": len(parsed.rejected),
            }
        )
        return done

    async def start(self) -> None:
        await self.parts.bus.start([self.parts.keys.intent_queue])
        self._started = True
        if not self._feeds:
            return
        await self._resume()
        settings = self.parts.settings
        self._session = aiohttp.ClientSession()
        self._writer = asyncio.create_task(self._write_quarantine())
        poll_options = PollOptions(
            fast_s=settings.poll_fast_s,
            slow_s=settings.poll_slow_s,
            timeout_s=settings.poll_timeout_s,
            backoff_base_s=settings.poll_backoff_base_s,
            backoff_cap_s=max(settings.poll_backoff_max_s, settings.poll_backoff_base_s),
        )
        budget = RequestBudget("espn", settings.espn_budget_requests, settings.espn_budget_window_s)
        self._pollers = [
            LeaguePoller(
                self._session,
                settings.espn_base_url,
                sport,
                league,
                budget,
                self._polled,
                options=poll_options,
                quarantine=self.quarantine,
            )
            for sport, league in self._leagues
        ]
        if self._matches:
            outlet = settings.statsperform_outlet_key.get_secret_value() if settings.statsperform_outlet_key else ""
            ma3_budget = RequestBudget("statsperform", settings.statsperform_budget_requests, 3600.0)
            self._pollers += [
                DocumentPoller(
                    self._session,
                    matchevent_url(settings.statsperform_base_url, outlet, fixture),
                    f"statsperform:{fixture}",
                    StatsPerformAdapter(self.quarantine),
                    ma3_budget,
                    self._streamed,
                    options=poll_options,
                )
                for fixture in self._matches
            ]
        if self._markets and self._markets.tokens:
            stream_options = StreamOptions(ping_s=settings.market_ping_s, silence_s=settings.market_silence_s)
            self._stream = MarketStream(
                self._session,
                settings.polymarket_ws_url,
                self._markets.tokens,
                self._streamed,
                adapter=PolymarketAdapter(self.quarantine),
                options=stream_options,
            )
        key = settings.sportradar_api_key.get_secret_value() if settings.sportradar_api_key else ""
        push_options = PushOptions(backoff_base_s=0.5, backoff_cap_s=max(settings.poll_backoff_max_s, 0.5))
        self._pushes = [
            PushStream(
                self._session,
                url,
                key,
                self._streamed,
                adapter=SportradarAdapter(quarantine=self.quarantine),
                options=push_options,
            )
            for url in self._push_urls
        ]
        self._tasks = [asyncio.create_task(p.run()) for p in self._pollers]
        self._tasks += [asyncio.create_task(p.run()) for p in self._pushes]
        if self._endpoint is not None:
            await self._listen(*self._endpoint)
        if self._stream is not None:
            self._tasks.append(asyncio.create_task(self._stream.run()))

    async def _listen(self, host: str, port: int, secrets: dict[str, SourceSecret]) -> None:
        self.pushed = PushedFeeds(
            secrets, self._pushed, max_bytes=self.parts.settings.feeds_max_bytes, quarantine=self.quarantine
        )
        runner = web.AppRunner(self.pushed.app(), access_log=None, shutdown_timeout=STOP_TIMEOUT_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"GOALHORN_FEEDS_LISTEN: cannot listen on {host}:{port} ({exc.strerror})") from exc
        self._site = runner
        log.info("taking pushed feeds on %s:%d (%s)", host, port, ", ".join(sorted(secrets)))

    async def _pushed(self, parsed: Parsed, diff: bool) -> None:
        await self.absorb(parsed, diff=diff)

    def ready(self) -> bool:
        return self._started and not any(task.done() for task in self._tasks)

    async def _resume(self) -> None:
        """Start the differ from the live state the previous ingest process left in Redis, so a change
        that happened while no ingest ran (or was read by one that died before publishing it) is
        still an event on the first poll, instead of the first poll being taken as the baseline."""
        live = self.ingestor.live
        resumed = 0
        for key in await live.live():
            game = await live.get(key)
            if game is not None:
                self.ingestor.differ.update(game.state)
                resumed += 1
        if resumed:
            log.info("resumed %d live games from Redis", resumed)

    async def wait(self) -> None:
        """Until every feed client has ended (they run until stopped, unless one fails)."""
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        self._started = False
        if self._site is not None:  # no new pushed payload; those being handled finish first
            await self._site.cleanup()
            self._site = None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
            if stuck:
                log.error("%d ingest tasks did not stop within %gs", len(stuck), STOP_TIMEOUT_S)
        self._tasks = []
        if self._writer is not None:
            self._pending.put_nowait(None)
            await self._writer
            self._writer = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.summary.polls = sum(p.polls for p in self._pollers)
        self.summary.poll_failures = {}
        for poller in self._pollers:
            for reason, count in poller.failures.items():
                self.summary.poll_failures[reason] = self.summary.poll_failures.get(reason, 0) + count
        self.summary.connections = self._stream.connections if self._stream is not None else 0
        self.summary.connections += sum(p.connections for p in self._pushes)
        self.summary.rejected = self.quarantine.total

    async def _polled(self, parsed: Parsed) -> None:
        await self.absorb(parsed, diff=True)

    async def _streamed(self, parsed: Parsed) -> None:
        await self.absorb(parsed, diff=False)

    def _mirror(self, item: QuarantinedPayload) -> None:
        if self._pending.qsize() < MIRROR_BACKLOG:
            self._pending.put_nowait(item)

    async def _write_quarantine(self) -> None:
        """Mirror rejections to Redis until told to stop (``None``), then write what is left."""
        store = QuarantineStore(self.parts.redis, self.parts.keys)
        while True:
            batch = [await self._pending.get()]
            while not self._pending.empty():
                batch.append(self._pending.get_nowait())
            items = [item for item in batch if item is not None]
            try:
                await store.push(items)
            except RedisError:
                log.exception("could not mirror %d rejected payloads to Redis", len(items))
            if len(items) < len(batch):
                return


def build(settings: Settings, parts: Parts | None = None) -> IngestStage:
    return IngestStage(parts or Parts.build(settings))


async def serve(settings: Settings, stop: asyncio.Event, *, metrics_port: int | None = None) -> None:
    """Run the ingest stage alone until ``stop`` is set."""
    from goalhorn.app.process import serve_stages

    await serve_stages(settings, (NAME,), stop, metrics_port=metrics_port)


async def run_ingest(settings: Settings, *, bus: Bus | None = None, duration_s: float | None = None) -> IngestSummary:
    """The ingest stage for ``duration_s`` (or until a feed client fails or the task is cancelled)."""
    check_feeds(settings)
    parts = Parts.build(settings, bus=bus)
    try:
        stage = IngestStage(parts)
        await stage.start()
        try:
            if duration_s is None:
                await stage.wait()
            else:
                await asyncio.sleep(duration_s)
        finally:
            await stage.stop()
        return stage.summary
    finally:
        await parts.aclose()
