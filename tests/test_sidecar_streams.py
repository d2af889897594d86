"""Server-sent events from a real uvicorn: score updates per game, signals, resuming with
Last-Event-ID within the stream's cap, heartbeats, and a client that stops reading is dropped while
the others are served."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast

import fastapi.routing
import httpx
import pytest

from goalhorn.models import EdgeSignal, GameState, GameStatus, Sport
from goalhorn.settings import Settings
from goalhorn.sidecar import guard, streams
from goalhorn.sidecar.streams import UpdatePublisher
from tests.support.api import serving_api

pytestmark = pytest.mark.timeout(60)


def state(game_id: str, home: int, *, padding: str = "") -> GameState:
    return GameState(
        game_id=game_id,
        source="espn",
        sport=Sport.HOCKEY,
        league="nhl",
        status=GameStatus.LIVE,
        status_detail=padding,
        home_team="EDM",
        away_team="PIT",
        home_team_id="6",
        away_team_id="16",
        home_score=home,
        away_score=0,
        period=1,
        observed_at=datetime.now(UTC),
    )


class Events:
    """An SSE client: parsed events (and comments) as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout_s: float = 5.0) -> dict[str, str]:
        event: dict[str, str] = {}
        async with asyncio.timeout(timeout_s):
            async for line in self._lines:
                if line == "":
                    if event:
                        return event
                    continue
                name, _, value = line.partition(":")
                event[name or "comment"] = value.strip()
        raise EOFError("stream ended")


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[str, dict[str, str], UpdatePublisher]]:
    async with serving_api(settings) as (app, base):
        services = app.state.services
        key, _ = await services.api_keys.create("acme", "enterprise", ("read",))
        yield base, {"Authorization": f"Bearer {key}"}, UpdatePublisher(services.redis, services.keys)
        async for name in services.redis.scan_iter(match=f"{settings.namespace}:*"):
            await services.redis.delete(name)


async def test_score_updates_of_the_games_asked_for_and_a_resume_gets_what_was_missed(served) -> None:
    base, auth, publisher = served
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as client:
        async with client.stream("GET", "/v1/stream?games=espn:1") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = Events(response)
            await asyncio.sleep(0.2)  # subscribed
            await publisher.publish([state("1", 1), state("2", 1)])
            await publisher.publish([state("1", 1)])  # unchanged: not an update
            await publisher.publish([state("1", 2)])
            first, second = await events.next(), await events.next()
        assert (first["event"], json.loads(first["data"])["home_score"]) == ("score", 1)
        assert json.loads(second["data"])["home_score"] == 2
        assert json.loads(second["data"])["game_id"] == "1"

        # missed while away: 3 and 4; then live again
        await publisher.publish([state("1", 3), state("2", 9), state("1", 4)])
        headers = {"Last-Event-ID": second["id"]}
        async with client.stream("GET", "/v1/stream?games=espn:1", headers=headers) as response:
            events = Events(response)
            missed = [json.loads((await events.next())["data"])["home_score"] for _ in range(2)]
            await publisher.publish([state("1", 5)])
            live = json.loads((await events.next())["data"])["home_score"]
        assert missed == [3, 4]
        assert live == 5


async def test_a_resume_past_the_cap_is_told_about_the_gap_and_bad_ids_are_refused(served, settings) -> None:
    base, auth, publisher = served
    for home in range(5):
        await publisher.publish([state("1", home)])
    redis = publisher._redis
    key = publisher._keys.score_updates()
    entries = await redis.xrange(key)
    await redis.xdel(key, *(entry[0] for entry in entries[:3]))  # as the cap would have: the first three gone
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as client:
        async with client.stream("GET", "/v1/stream", headers={"Last-Event-ID": entries[0][0].decode()}) as response:
            events = Events(response)
            gap = await events.next()
            rest = [json.loads((await events.next())["data"])["home_score"] for _ in range(2)]
        assert gap["event"] == "gap"
        assert rest == [3, 4]
        bad = await client.get("/v1/stream", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 422
        assert (await client.get("/v1/stream", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_signals_stream_and_heartbeats(served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastapi.routing, "_PING_INTERVAL", 0.3)
    base, auth, publisher = served
    signal = EdgeSignal(
        token_id="tok",
        game_id="1",
        side="home",
        fair=0.6,
        ask=0.5,
        edge_cents=10,
        book_age_s=0.1,
        state_age_s=0.2,
        created_at=datetime.now(UTC),
    )
    async with (
        httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as client,
        client.stream("GET", "/v1/signals/stream") as response,
    ):
        events = Events(response)
        heartbeat = await events.next(2.0)
        await publisher.publish([], [signal])
        received = await events.next()
        while received.get("comment") == "ping":
            received = await events.next()
    assert heartbeat == {"comment": "ping"}
    assert received["event"] == "signal"
    assert json.loads(received["data"])["token_id"] == "tok"


async def test_a_client_that_stops_reading_is_dropped_and_the_others_get_everything(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "SEND_TIMEOUT_S", 1.0)
    monkeypatch.setattr(streams, "CLIENT_BUFFER", 64)
    async with serving_api(settings) as (app, base):
        services = app.state.services
        key, _ = await services.api_keys.create("acme", "enterprise", ("read",))
        publisher = UpdatePublisher(services.redis, services.keys)
        host, port = base.removeprefix("http://").split(":")
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, int(port)))
        stalled.sendall(f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        try:
            async with (
                httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client,
                client.stream("GET", "/v1/stream") as response,
            ):
                events = Events(response)
                await asyncio.sleep(0.3)
                assert services.score_hub.subscribers == 2
                total = 2000

                async def publish() -> None:
                    padding = "x" * 4000
                    for home in range(total):  # 8 MB: more than the socket buffers of the stalled client hold
                        await publisher.publish([state("1", home, padding=padding)])
                        await asyncio.sleep(0.001)

                publishing = asyncio.create_task(publish())
                got = [json.loads((await events.next())["data"])["home_score"] for _ in range(total)]
                await publishing
                assert got == list(range(total)), "the reading client misses nothing"
                for _ in range(50):
                    if services.score_hub.subscribers == 1:
                        break
                    await asyncio.sleep(0.1)
                assert services.score_hub.subscribers == 1
                assert services.score_hub.dropped == 1
            # the stalled client's connection was closed: what it holds ends in EOF
            stalled.settimeout(5)
            while chunk := await asyncio.to_thread(stalled.recv, 1 << 20):
                assert len(chunk) > 0
        finally:
            stalled.close()
            async for name in services.redis.scan_iter(match=f"{settings.namespace}:*"):
                await services.redis.delete(name)


async def test_the_ingest_stage_appends_score_changes_to_the_stream_the_api_serves(settings: Settings, bus) -> None:
    from goalhorn.app.ingest import IngestStage
    from goalhorn.app.parts import Parts
    from goalhorn.ingest.adapter import Parsed

    parts = Parts.build(settings, bus=bus)
    try:
        stage = IngestStage(parts, feeds=False)
        await stage.absorb(Parsed(states=[state("1", 0), state("2", 0)]), diff=False)
        await stage.absorb(Parsed(states=[state("1", 0)]), diff=False)  # unchanged: no update
        await stage.absorb(Parsed(states=[state("1", 1)]), diff=False)
        entries = cast(list, await parts.redis.xrange(parts.keys.score_updates()))
        games = [(fields[b"game"], json.loads(fields[b"data"])["home_score"]) for _, fields in entries]
        assert games == [(b"espn:1", 0), (b"espn:2", 0), (b"espn:1", 1)]
    finally:
        async for name in parts.redis.scan_iter(match=f"{settings.namespace}:*"):
            await parts.redis.delete(name)
        await parts.aclose()
