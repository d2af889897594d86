"""Sportradar's push feeds over a long-lived HTTP GET: read, watch the heartbeats, redial, keep order.

One :class:`PushStream` per configured feed URL (``GOALHORN_SPORTRADAR_FEEDS``). It sends the API
key in the ``x-api-key`` header (never in the URL, never in a log line), follows Sportradar's redirect
to the stream, and feeds every read, however it is cut, to one :class:`SportradarAdapter`, which
buffers partial objects. The stream sends ``{"heartbeat": {"interval": 5000}}`` between payloads:
silence longer than ``silence_intervals`` heartbeat intervals (the announced one, else
``heartbeat_s``) is a dead connection. Whenever a connection ends — closed, refused, silent, a 5xx,
a 4xx, a cut — the unfinished object is rejected (``truncated``), and the client redials after an
exponential backoff with jitter (a 429's ``Retry-After`` honoured). The adapter, and with it each
game's sequence gate and last score, outlives connections, so a payload Sportradar sends again after
a reconnect is dropped as a duplicate and events stay in sequence order across reconnects.

A read's result is handed on (``on_parsed``) before the next read; if handing it on fails (the bus
is down), it is retried with backoff, ``handler_attempts`` times in all, while the stream waits (the
server's TCP window holds the rest): the ingestor's dedup makes a retry of what did go out harmless.
Every disconnect is counted in ``goalhorn_push_stream_disconnects_total{feed,reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import Counter

from goalhorn.backoff import Backoff
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.sportradar import LEAGUES, SportradarAdapter
from goalhorn.models import utcnow

log = logging.getLogger(__name__)

Reason = Literal["closed", "silent", "timeout", "refused", "http_4xx", "http_429", "http_5xx", "auth", "error"]
DISCONNECTS = Counter("goalhorn_push_stream_disconnects", "Push-feed connections lost.", ["feed", "reason"])
HANDLER_FAILURES = Counter(
    "goalhorn_push_stream_handler_failures", "Push-feed reads whose handling failed every attempt.", ["feed"]
)
READ_SIZE = 64 << 10


@dataclass(frozen=True, slots=True)
class PushOptions:
    heartbeat_s: float = 5.0
    """Heartbeat interval assumed until the stream announces its own."""
    silence_intervals: float = 3.0
    connect_timeout_s: float = 10.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    handler_attempts: int = 5


def feed_label(url: str) -> str:
    """A name for a feed in logs and metrics: its league (``/nfl/official/...`` -> ``nfl``) or host."""
    parts = urlsplit(url)
    for segment in parts.path.split("/"):
        if segment.lower() in LEAGUES:
            return segment.lower()
    return parts.hostname or "feed"


class _Ended(Exception):
    def __init__(self, reason: Reason, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason: Reason = reason
        self.retry_after = retry_after


class PushStream:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        api_key: str,
        on_parsed: Callable[[Parsed], Awaitable[object]],
        *,
        adapter: SportradarAdapter | None = None,
        options: PushOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.feed = feed_label(url)
        self.adapter = adapter or SportradarAdapter()
        self.options = options or PushOptions()
        self.backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s, rng)
        self.connections = 0
        self.disconnects: dict[str, int] = {}
        self.handler_failures = 0
        self._session = session
        self._api_key = api_key
        self._on_parsed = on_parsed

    def silence_s(self) -> float:
        interval = self.adapter.heartbeat_interval_s or self.options.heartbeat_s
        return interval * self.options.silence_intervals

    async def run(self) -> None:
        """Stay connected until cancelled."""
        while True:
            retry_after = None
            try:
                await self._connection()
                reason: Reason = "closed"
            except _Ended as ended:
                reason, retry_after = ended.reason, ended.retry_after
            except TimeoutError:
                reason = "timeout"
            except aiohttp.ClientConnectorError:
                reason = "refused"
            except (aiohttp.ClientError, OSError):
                reason = "error"
            self.adapter.close()  # an unfinished object is rejected and counted; the gates stay
            self.disconnects[reason] = self.disconnects.get(reason, 0) + 1
            DISCONNECTS.labels(self.feed, reason).inc()
            delay = max(self.backoff.next_delay(), retry_after or 0.0)
            log.warning("sportradar %s: connection ended (%s); reconnecting in %.2fs", self.feed, reason, delay)
            await asyncio.sleep(delay)

    async def _connection(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.connect_timeout_s)
        async with asyncio.timeout(self.options.connect_timeout_s):
            response = await self._session.get(
                self.url, headers={"x-api-key": self._api_key, "Accept": "application/json"}, timeout=timeout
            )
        async with response:
            _check(response)
            self.connections += 1
            while True:
                try:
                    async with asyncio.timeout(self.silence_s()):
                        data = await response.content.readany()
                except TimeoutError:
                    raise _Ended("silent") from None
                if not data:
                    return
                parsed = self.adapter.feed(data, received_at=utcnow())
                if parsed.states or parsed.events:
                    self.backoff.reset()
                await self._hand_on(parsed)

    async def _hand_on(self, parsed: Parsed) -> None:
        if not (parsed.states or parsed.events or parsed.books):
            return
        retry = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        for attempt in range(1, self.options.handler_attempts + 1):
            try:
                await self._on_parsed(parsed)
                return
            except Exception:
                if attempt == self.options.handler_attempts:
                    log.exception("sportradar %s: handling a read failed %d times; skipped", self.feed, attempt)
                else:
                    log.warning("sportradar %s: handling a read failed (attempt %d)", self.feed, attempt)
                    await asyncio.sleep(retry.next_delay())
        self.handler_failures += 1
        HANDLER_FAILURES.labels(self.feed).inc()


def _check(response: aiohttp.ClientResponse) -> None:
    status = response.status
    if status == 200:
        return
    if status == 429:
        raise _Ended("http_429", _retry_after(response.headers.get("Retry-After")))
    if status in (401, 403):
        raise _Ended("auth")
    raise _Ended("http_5xx" if status >= 500 else "http_4xx")


def _retry_after(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value <= 3600 else None
