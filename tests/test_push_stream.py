"""The Sportradar push client against a local server: streams cut mid-object, heartbeats that stop,
5xx and 429, resent and out-of-order payloads, a failing handler; the API key only in its header."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from goalhorn.ingest.adapter import Parsed
from goalhorn.ingest.push_stream import PushOptions, PushStream, feed_label
from goalhorn.ingest.quarantine import rejected_count
from goalhorn.models import EventKind
from tests.feeds import fixture
from tests.httpserver import serve

pytestmark = pytest.mark.timeout(30)
KEY = "sr-secret-key-0123456789"
FAST = PushOptions(heartbeat_s=0.1, silence_intervals=3, backoff_base_s=0.01, backoff_cap_s=0.05)


def objects(name: str) -> list[bytes]:
    """The fixture's top-level objects, as the server sends them."""
    text, decoder, at = fixture(name).decode(), json.JSONDecoder(), 0
    out: list[bytes] = []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return out
        _, end = decoder.raw_decode(text, at)
        out.append(text[at:end].encode())
        at = end


NFL = objects("sportradar/nfl_push.jsonstream")
PAYLOADS = [o for o in NFL if b'"payload"' in o]
HEARTBEAT = b'{"heartbeat": {"interval": 100}}'


@dataclass
class Connection:
    """What the server does on one connection: a status, the bytes (sent ``size`` at a time), then
    how it ends: ``eof`` (a clean end), ``cut`` (the socket dropped), ``hang`` (silent, open)."""

    data: bytes = b""
    end: str = "eof"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 333


class PushServer:
    def __init__(self, script: list[Connection]) -> None:
        self.script = script
        self.keys: list[str | None] = []
        self.urls: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.keys.append(request.headers.get("x-api-key"))
        self.urls.append(str(request.rel_url))
        step = self.script[min(len(self.keys) - 1, len(self.script) - 1)]
        if step.status != 200:
            return web.Response(status=step.status, headers=step.headers, text="no")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(step.data), step.size):
            await response.write(step.data[start : start + step.size])
            await asyncio.sleep(0)
        if step.end == "cut":
            assert request.transport is not None
            request.transport.close()
        elif step.end == "hang":
            await asyncio.sleep(3600)
        else:
            await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/nfl/official/trial/stream/en/events/subscribe", self.handle)
        return app


class Sink:
    def __init__(self, failures: int = 0) -> None:
        self.events: list = []
        self.failures = failures
        self.calls = 0

    async def __call__(self, parsed: Parsed) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("bus down")
        self.events += parsed.events


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


async def run_until(server: PushServer, sink: Sink, done: Callable[[PushStream], bool]) -> PushStream:
    async with serve(server.app()) as base, aiohttp.ClientSession() as session:
        stream = PushStream(
            session,
            f"{base}/nfl/official/trial/stream/en/events/subscribe",
            KEY,
            sink,
            options=FAST,
            rng=random.Random(5),
        )
        task = asyncio.create_task(stream.run())
        try:
            await until(lambda: done(stream))
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    return stream


KINDS = [
    EventKind.TOUCHDOWN,
    EventKind.EXTRA_POINT,
    EventKind.FIELD_GOAL,
    EventKind.HALFTIME,
    EventKind.TOUCHDOWN,
    EventKind.TWO_POINT_CONVERSION,
    EventKind.SAFETY,
    EventKind.GAME_END,
]


async def test_a_stream_cut_mid_object_is_redialled_and_the_resent_payloads_alert_once() -> None:
    before = rejected_count("sportradar", "truncated")
    whole = b"".join(NFL)
    cut_at = whole.index(PAYLOADS[5]) + 200  # inside the field goal's payload
    # Sportradar's stream has no memory: after the reconnect it sends recent payloads again.
    server = PushServer([Connection(whole[:cut_at], "cut"), Connection(b"".join(PAYLOADS[2:]), "hang")])
    sink = Sink()
    stream = await run_until(server, sink, lambda s: len(sink.events) == len(KINDS))
    assert [e.kind for e in sink.events] == KINDS
    assert len({e.event_id for e in sink.events}) == len(KINDS)
    sequences = [e.sequence for e in sink.events]
    assert sequences == sorted(sequences), "in sequence order across the reconnect"
    # One resend and one late payload in the feed itself, then the touchdown (twice) and the extra
    # point sent again after the reconnect; the field goal cut short the first time goes through.
    assert sum(stream.adapter.gate.dropped.values()) == 5
    assert stream.connections == 2
    assert stream.disconnects in ({"error": 1}, {"closed": 1})  # the cut, seen as either
    assert rejected_count("sportradar", "truncated") == before + 1


async def test_a_stream_whose_heartbeats_stop_is_redialled_after_three_intervals() -> None:
    server = PushServer(
        [Connection(HEARTBEAT + PAYLOADS[0] + PAYLOADS[1], "hang"), Connection(HEARTBEAT + PAYLOADS[2], "hang")]
    )
    sink = Sink()
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = await run_until(server, sink, lambda s: len(sink.events) == 1)
    assert stream.disconnects == {"silent": 1}
    assert loop.time() - started >= 0.3  # 3 x the announced 100 ms
    assert stream.adapter.heartbeat_interval_s == 0.1


async def test_5xx_429_and_refused_keys_are_counted_and_retried_with_the_key_in_the_header_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="goalhorn")
    server = PushServer(
        [
            Connection(status=503),
            Connection(status=429, headers={"Retry-After": "0.2"}),
            Connection(status=401),
            Connection(b"".join(PAYLOADS[:4]), "hang"),
        ]
    )
    sink = Sink()
    stream = await run_until(server, sink, lambda s: len(sink.events) == 1)
    assert stream.disconnects == {"http_5xx": 1, "http_429": 1, "auth": 1}
    assert server.keys == [KEY] * 4
    assert all(KEY not in url for url in server.urls)
    assert KEY not in caplog.text


async def test_late_and_duplicate_payloads_on_one_connection_are_dropped() -> None:
    server = PushServer([Connection(b"".join(NFL), "hang", size=1)])
    sink = Sink()
    stream = await run_until(server, sink, lambda s: len(sink.events) == len(KINDS))
    assert [e.kind for e in sink.events] == KINDS
    assert stream.adapter.gate.dropped == {"late": 1, "duplicate": 1}


async def test_a_failed_hand_on_is_retried_and_nothing_is_lost() -> None:
    server = PushServer([Connection(b"".join(PAYLOADS[:4]), "hang", size=1 << 20)])
    sink = Sink(failures=2)
    stream = await run_until(server, sink, lambda s: len(sink.events) == 1)
    assert [e.kind for e in sink.events] == [EventKind.TOUCHDOWN]
    assert sink.calls == 3
    assert stream.handler_failures == 0


def test_a_feed_is_named_by_its_league() -> None:
    assert feed_label("https://api.sportradar.com/nfl/official/production/stream/en/events/subscribe") == "nfl"
    assert feed_label("https://api.sportradar.com/mlb/production/stream/en/events/subscribe") == "mlb"
    assert feed_label("https://push.example.com/x") == "push.example.com"


@pytest.mark.parametrize("league", ["nba_v7", "mlb", "nfl", "nhl"])
async def test_each_leagues_stream_cut_and_resent_gives_the_events_of_the_clean_stream(league: str) -> None:
    """However the connection is cut and whatever is sent again after it, the client's events are the
    adapter's over the clean stream: the same plays, teams and scores, once each, in order."""
    stream = b"".join(objects(f"sportradar/{league}_push.jsonstream"))
    from datetime import UTC, datetime

    from goalhorn.ingest.sportradar import SportradarAdapter

    clean = SportradarAdapter().feed(stream, received_at=datetime.now(UTC)).events
    thirds = [len(stream) // 3, 2 * len(stream) // 3]
    server = PushServer(
        [
            Connection(stream[: thirds[0]], "cut"),
            Connection(stream[: thirds[1]], "cut", size=4096),  # from the start again, cut further on
            Connection(stream, "hang", size=50_000),
        ]
    )
    sink = Sink()
    await run_until(server, sink, lambda s: len(sink.events) >= len(clean))
    assert [(e.event_id, e.kind, e.team, e.home_score, e.away_score) for e in sink.events] == [
        (e.event_id, e.kind, e.team, e.home_score, e.away_score) for e in clean
    ]
