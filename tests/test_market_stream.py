from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.market_stream import MarketStream, StreamOptions
from goalhorn.ingest.quarantine import rejected_count
from tests.httpserver import serve

pytestmark = pytest.mark.timeout(30)
TOKENS = ["t1", "t2"]


def book(bid: str, ask: str, ts: str) -> str:
    return json.dumps(
        {
            "event_type": "book",
            "asset_id": "t1",
            "bids": [{"price": bid, "size": "10"}],
            "asks": [{"price": ask, "size": "10"}],
            "timestamp": ts,
        }
    )


def move(side: str, price: str, size: str, ts: str) -> str:
    change = {"asset_id": "t1", "price": price, "size": size, "side": side}
    return json.dumps([{"event_type": "price_change", "price_changes": [change], "timestamp": ts}])


CUT = book(".1", ".9", "9")[:40]  # a frame cut short


class ReplayServer:
    """Replays one script of frames per connection; then closes it, or stays and answers PING."""

    def __init__(self, scripts: list[tuple[list[str], bool]], refusals: int = 0) -> None:
        self.scripts = scripts
        self.subscriptions: list[dict] = []
        self.pings = 0
        self.refusals = refusals

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.refusals:
            self.refusals -= 1
            return web.Response(status=503, text="upstream unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        index = len(self.subscriptions)
        self.subscriptions.append(json.loads(await ws.receive_str()))
        frames, hang_up = self.scripts[min(index, len(self.scripts) - 1)]
        for frame in frames:
            await ws.send_str(frame)
        if hang_up:
            assert request.transport is not None
            request.transport.close()  # an abrupt drop, no close frame
            return ws
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT and message.data == "PING":
                self.pings += 1
                await ws.send_str("PONG")
        return ws

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws/market", self.handle)
        return app


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_reconnects_resubscribes_and_rebuilds_the_book_from_the_next_snapshot() -> None:
    before = rejected_count("polymarket", "not_json")
    server = ReplayServer(
        [
            (
                [book(".40", ".60", "1"), move("BUY", ".45", "5", "2"), "{oops", CUT, move("SELL", ".55", "5", "3")],
                True,
            ),
            ([move("BUY", ".50", "5", "4"), book(".30", ".70", "5"), move("SELL", ".65", "1", "6")], False),
        ]
    )
    tops: list[tuple[float | None, float | None, int]] = []

    async def on_parsed(parsed: Parsed) -> None:
        tops.extend((b.best_bid, b.best_ask, b.ts_ms) for b in parsed.books)

    async with serve(server.app()) as base, aiohttp.ClientSession() as session:
        stream = MarketStream(
            session,
            base.replace("http", "ws") + "/ws/market",
            TOKENS,
            on_parsed,
            options=StreamOptions(ping_s=0.05, silence_s=5, backoff_base_s=0.01, backoff_cap_s=0.05),
            rng=random.Random(3),
        )
        task = asyncio.create_task(stream.run())
        await until(lambda: len(tops) == 5 and stream.adapter.stats["heartbeats"] >= 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert server.subscriptions == [{"assets_ids": TOKENS, "type": "market"}] * 2
    assert stream.connections == 2
    assert sum(stream.disconnects.values()) == 1
    assert tops == [(0.4, 0.6, 1), (0.45, 0.6, 2), (0.45, 0.55, 3), (0.3, 0.7, 5), (0.3, 0.65, 6)]
    assert stream.adapter.stats["no_book"] == 1  # the update that came before the new snapshot
    assert rejected_count("polymarket", "not_json") == before + 2  # the malformed and the truncated frame
    assert server.pings >= 1


async def test_a_refused_connection_is_retried_with_backoff() -> None:
    server = ReplayServer([([book(".40", ".60", "1")], False)])
    tops: list[float | None] = []

    async def on_parsed(parsed: Parsed) -> None:
        tops.extend(b.best_bid for b in parsed.books)

    async with aiohttp.ClientSession() as session:
        async with serve(server.app()) as base:
            url = base.replace("http", "ws") + "/ws/market"
        # the server is gone: connections are refused until it is back on the same port
        options = StreamOptions(ping_s=1, silence_s=5, backoff_base_s=0.01, backoff_cap_s=0.05)
        stream = MarketStream(session, url, TOKENS, on_parsed, options=options)
        task = asyncio.create_task(stream.run())
        await until(lambda: sum(stream.disconnects.values()) >= 3)
        assert stream.connections == 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert stream.backoff.failures >= 3


async def test_a_5xx_on_the_upgrade_is_retried_until_the_server_accepts() -> None:
    server = ReplayServer([([book(".40", ".60", "1")], False)], refusals=2)
    tops: list[float | None] = []

    async def on_parsed(parsed: Parsed) -> None:
        tops.extend(b.best_bid for b in parsed.books)

    async with serve(server.app()) as base, aiohttp.ClientSession() as session:
        options = StreamOptions(ping_s=1, silence_s=5, backoff_base_s=0.01, backoff_cap_s=0.05)
        stream = MarketStream(session, base.replace("http", "ws") + "/ws/market", TOKENS, on_parsed, options=options)
        task = asyncio.create_task(stream.run())
        await until(lambda: tops == [0.4])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sum(stream.disconnects.values()) == 2
    assert stream.connections == 1
    assert len(server.subscriptions) == 1


async def test_a_silent_connection_is_dropped_and_replaced() -> None:
    server = ReplayServer([([book(".40", ".60", "1")], False)])

    async def on_parsed(parsed: Parsed) -> None:
        return None

    async with serve(server.app()) as base, aiohttp.ClientSession() as session:
        options = StreamOptions(ping_s=60, silence_s=0.2, backoff_base_s=0.01, backoff_cap_s=0.05)
        stream = MarketStream(session, base.replace("http", "ws") + "/ws/market", TOKENS, on_parsed, options=options)
        task = asyncio.create_task(stream.run())
        await until(lambda: stream.disconnects.get("silent", 0) >= 1 and stream.connections >= 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(server.subscriptions) >= 2
