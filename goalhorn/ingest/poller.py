"""Polling ESPN's scoreboard: one task per league, adaptive interval, budget, timeouts, backoff.

Each :class:`LeaguePoller` fetches its league's scoreboard, runs it through the ESPN adapter and
hands the result on. It polls every ``fast_s`` while a game of the league is live (or due to start
before the slow interval would look again) and every ``slow_s`` otherwise. Every request is taken
from the upstream's :class:`RequestBudget` first; a spent budget skips polls until a request leaves
the window. A timeout, a refused connection, a 5xx or 429 (``Retry-After`` honoured), a truncated,
malformed or oversized body (``max_body_bytes``), and a scoreboard whose handling raised (``publish``
for the bus, ``handler`` otherwise: the ingestor derives its events again from the next poll) count
as a failure (``goalhorn_poll_errors_total{league,reason}``), and the next poll waits an
exponential backoff with jitter instead. Nothing a poll does raises: the task keeps going, and the
last good scoreboard stays available, tagged with its age.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
from prometheus_client import Counter

from goalhorn.backoff import Backoff
from goalhorn.errors import BusError
from goalhorn.ingest.adapter import FeedAdapter, Parsed
from goalhorn.ingest.budget import RequestBudget
from goalhorn.ingest.espn import EspnAdapter
from goalhorn.ingest.quarantine import Quarantine
from goalhorn.models import GameState, GameStatus, Sport, utcnow

log = logging.getLogger(__name__)

POLL_ERRORS = Counter("goalhorn_poll_errors", "Failed scoreboard polls.", ["league", "reason"])
MAX_BODY = 16 << 20
LATE_START = timedelta(hours=3)
"""A game still scheduled this long after its start time is taken as postponed, not as about to start."""


@dataclass(frozen=True, slots=True)
class PollOptions:
    fast_s: float = 5.0
    slow_s: float = 30.0
    timeout_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    max_body_bytes: int = MAX_BODY
    """A scoreboard larger than this (after decompression) is refused as ``oversized``."""


def scoreboard_url(base: str, sport: str, league: str) -> str:
    return f"{base.rstrip('/')}/apis/site/v2/sports/{sport}/{league}/scoreboard"


class _Failure(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class DocumentPoller:
    """Polls one URL whose body is one whole document for ``adapter`` (a scoreboard, a match); the
    ``label`` names it in logs and in ``goalhorn_poll_errors_total``. The URL may hold a secret (an
    outlet key): it is never logged."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        label: str,
        adapter: FeedAdapter,
        budget: RequestBudget,
        on_parsed: Callable[[Parsed], Awaitable[object]],
        *,
        options: PollOptions | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.label = label
        self.url = url
        self.options = options or PollOptions()
        self.adapter = adapter
        self.backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s, rng)
        self._session = session
        self._budget = budget
        self._on_parsed = on_parsed
        self._sleep = sleep
        self.last_good: list[GameState] = []
        self.last_good_at: datetime | None = None
        self.polls = 0
        self.failures: dict[str, int] = {}

    def last_good_age_s(self, now: datetime | None = None) -> float | None:
        """Seconds since the last scoreboard that parsed, or None before the first."""
        if self.last_good_at is None:
            return None
        return max(0.0, ((now or utcnow()) - self.last_good_at).total_seconds())

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await self._sleep(await self.poll_once())

    async def poll_once(self) -> float:
        """One poll (unless the budget is spent); returns the seconds to wait before the next."""
        wait = self._budget.reserve()
        if wait > 0:
            return max(wait, self.options.fast_s)
        self.polls += 1
        try:
            body = await self._fetch()
            received = utcnow()
            parsed = self.adapter.feed(body, received_at=received)
            if not parsed.states and parsed.rejected:
                raise _Failure("malformed")
        except _Failure as failure:
            return self._failed(failure)
        self.last_good, self.last_good_at = parsed.states, received
        try:
            await self._on_parsed(parsed)
        except BusError as exc:
            return self._failed(_Failure("publish"), exc)
        except Exception as exc:
            return self._failed(_Failure("handler"), exc)
        self.backoff.reset()
        return self._interval(parsed.states, received)

    async def _fetch(self) -> bytes:
        timeout = aiohttp.ClientTimeout(total=self.options.timeout_s)
        try:
            async with self._session.get(self.url, timeout=timeout, allow_redirects=False) as response:
                if response.status == 429:
                    raise _Failure("http_429", _retry_after(response.headers.get("Retry-After")))
                if response.status >= 500:
                    raise _Failure("http_5xx")
                if response.status != 200:
                    raise _Failure("http_4xx")
                return await self._read_body(response)
        except TimeoutError as exc:
            raise _Failure("timeout") from exc
        except aiohttp.ClientPayloadError as exc:
            raise _Failure("truncated") from exc
        except aiohttp.ClientError as exc:
            raise _Failure("connection") from exc

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, however it is framed, or ``oversized`` as soon as it passes the cap.

        ``content.read(n)`` returns one buffered chunk, not n bytes, so the stream is read to its end.
        A body cut short (before its Content-Length or its last chunk) makes aiohttp raise
        ``ClientPayloadError``. Content-Length counts the bytes on the wire, compressed or not, so it
        only refuses early; the cap applies to the decompressed body.
        """
        cap = self.options.max_body_bytes
        if response.content_length is not None and response.content_length > cap:
            raise _Failure("oversized")
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > cap:
                raise _Failure("oversized")
        return bytes(body)

    def _failed(self, failure: _Failure, cause: Exception | None = None) -> float:
        self.failures[failure.reason] = self.failures.get(failure.reason, 0) + 1
        POLL_ERRORS.labels(self.label, failure.reason).inc()
        delay = self.backoff.next_delay()
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        detail = f": {cause!r}" if cause is not None else ""
        log.warning("%s: poll failed (%s%s); next in %.1fs", self.label, failure.reason, detail, delay)
        return delay

    def _interval(self, states: list[GameState], now: datetime) -> float:
        soon, late = now + timedelta(seconds=self.options.slow_s), now - LATE_START
        busy = any(
            s.status is GameStatus.LIVE
            or (s.status is GameStatus.SCHEDULED and s.start_time is not None and late <= s.start_time <= soon)
            for s in states
        )
        return self.options.fast_s if busy else self.options.slow_s


class LeaguePoller(DocumentPoller):
    """ESPN's scoreboard of one league."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        sport: Sport,
        league: str,
        budget: RequestBudget,
        on_parsed: Callable[[Parsed], Awaitable[object]],
        *,
        options: PollOptions | None = None,
        quarantine: Quarantine | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        adapter = EspnAdapter(sport=sport, league=league, quarantine=quarantine)
        url = scoreboard_url(base_url, sport.value, league)
        super().__init__(session, url, league, adapter, budget, on_parsed, options=options, sleep=sleep, rng=rng)
        self.league = league


def _retry_after(raw: str | None) -> float | None:
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None
