"""Polymarket's market channel over a WebSocket: subscribe, heartbeat, reconnect, rebuild.

On connecting, the client subscribes to its tokens (``{"assets_ids": [...], "type": "market"}``),
then feeds every frame to a :class:`PolymarketAdapter` and hands the result on. It sends ``PING``
every ``ping_s`` (the server answers ``PONG``), and treats ``silence_s`` without any frame as a dead
connection. Whenever the connection ends — closed, refused, silent, broken — the books are dropped
(an update missed while away would leave them wrong) and the client reconnects after an exponential
backoff with jitter, subscribes again, and rebuilds each book from its next ``book`` snapshot;
level updates that arrive before it are skipped and counted by the adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client import Counter

from goalhorn.backoff import Backoff
from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.polymarket import PolymarketAdapter
from goalhorn.models import utcnow

log = logging.getLogger(__name__)

DISCONNECTS = Counter("goalhorn_market_stream_disconnects", "Market-channel connections lost.", ["reason"])
PING = "PING"
CLOSE_TIMEOUT_S = 2.0
"""How long a closing handshake may take before the connection is simply dropped."""


@dataclass(frozen=True, slots=True)
class StreamOptions:
    ping_s: float = 10.0
    silence_s: float = 30.0
    connect_timeout_s: float = 10.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0


class MarketStream:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        tokens: Sequence[str],
        on_parsed: Callable[[Parsed], Awaitable[object]],
        *,
        adapter: PolymarketAdapter | None = None,
        options: StreamOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.tokens = list(tokens)
        self.adapter = adapter or PolymarketAdapter()
        self.options = options or StreamOptions()
        self.backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s, rng)
        self.connections = 0
        self.disconnects: dict[str, int] = {}
        self._session = session
        self._on_parsed = on_parsed

    def subscription(self) -> str:
        return json.dumps({"assets_ids": self.tokens, "type": "market"})

    async def run(self) -> None:
        """Stay subscribed until cancelled."""
        while True:
            try:
                reason = await self._connection()
            except TimeoutError:
                reason = "timeout"
            except (aiohttp.ClientError, OSError) as exc:
                reason = type(exc).__name__
            self.adapter.reset()
            self.disconnects[reason] = self.disconnects.get(reason, 0) + 1
            DISCONNECTS.labels(reason).inc()
            delay = self.backoff.next_delay()
            log.warning("market stream: connection ended (%s); reconnecting in %.2fs", reason, delay)
            await asyncio.sleep(delay)

    async def _connection(self) -> str:
        timeout = aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S)
        async with asyncio.timeout(self.options.connect_timeout_s):
            ws = await self._session.ws_connect(self.url, timeout=timeout, autoping=True)
        async with ws:
            self.connections += 1
            await ws.send_str(self.subscription())
            pinger = asyncio.create_task(self._ping(ws))
            try:
                return await self._receive(ws)
            finally:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        while True:
            try:
                # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that races
                # with a frame arriving, and the stream would never stop.
                message = await ws.receive(timeout=self.options.silence_s)
            except TimeoutError:
                return "silent"
            if message.type is aiohttp.WSMsgType.TEXT:
                data = message.data.encode()
            elif message.type is aiohttp.WSMsgType.BINARY:
                data = message.data
            elif message.type is aiohttp.WSMsgType.ERROR:
                return "error"
            else:
                return "closed"
            parsed = self.adapter.feed(data, received_at=utcnow())
            if not parsed.rejected:
                self.backoff.reset()
            try:
                await self._on_parsed(parsed)
            except Exception:
                log.exception("market stream: handling a frame failed")

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(self.options.ping_s)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(PING)
