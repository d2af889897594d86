"""``goalhorn run ingest`` as a user runs it, with a Sportradar push feed and the pushed-feed endpoint:
both reach live state in Redis, the pushed payload is answered 202, the key and the secret appear in
no log line, and SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime

import pytest
import redis as sync_redis
from aiohttp import web

from goalhorn.ingest.pushed import SIGNATURE, sign
from goalhorn.ingest.sportradar import SportradarAdapter
from goalhorn.keys import Keys
from goalhorn.settings import LOCAL_REDIS_URL
from tests.feeds import fixture
from tests.httpserver import serve
from tests.processes import Process, free_port, processes, real_env

pytestmark = pytest.mark.timeout(120)
KEY = "sr-process-key-5f2a9c"
SECRET = "hook-secret-for-the-process-test"
NFL = fixture("sportradar/nfl_push.jsonstream")
MLB = fixture("sportradar/mlb_push.jsonstream")


def game_of(stream: bytes) -> str:
    return SportradarAdapter().feed(stream, received_at=datetime.now(UTC)).states[0].game_id


def stream_app() -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-api-key") != KEY:
            return web.Response(status=401)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(NFL)
        await asyncio.sleep(3600)
        return response

    app = web.Application()
    app.router.add_get("/nfl/official/trial/stream/en/events/subscribe", handle)
    return app


def stored_state(namespace: str, game_key: str) -> dict | None:
    client = sync_redis.Redis.from_url(LOCAL_REDIS_URL)
    try:
        raw = client.hget(Keys(namespace).game_state(game_key), "state")
    finally:
        client.close()
    return None if raw is None else json.loads(raw)


def post(url: str, body: bytes, signature: str) -> int:
    request = urllib.request.Request(url, data=body, headers={SIGNATURE: signature}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


async def until(predicate, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await asyncio.to_thread(predicate):
            await asyncio.sleep(0.1)


async def test_run_ingest_streams_sportradar_and_takes_pushed_feeds(tmp_path) -> None:
    endpoint, metrics = free_port(), free_port()
    async with serve(stream_app()) as base:
        env = real_env(
            GOALHORN_SPORTRADAR_FEEDS=f"{base}/nfl/official/trial/stream/en/events/subscribe",
            GOALHORN_SPORTRADAR_API_KEY=KEY,
            GOALHORN_FEEDS_LISTEN=f"127.0.0.1:{endpoint}",
            GOALHORN_FEEDS_SECRETS=f"sportradar=hmac:{SECRET}",
        )
        namespace = env["GOALHORN_NAMESPACE"]
        with processes(tmp_path) as running:
            ingest = running["ingest"] = Process(
                "ingest", ["run", "ingest", "--metrics-port", str(metrics)], env, tmp_path
            ).start()
            await asyncio.to_thread(ingest.wait_for, r"running \(namespace")
            nfl_key = f"sportradar:{game_of(NFL)}"
            await until(lambda: (stored_state(namespace, nfl_key) or {}).get("status") == "final")
            status = await asyncio.to_thread(
                post, f"http://127.0.0.1:{endpoint}/v1/feeds/sportradar", MLB, sign(SECRET.encode(), MLB)
            )
            assert status == 202
            mlb = stored_state(namespace, f"sportradar:{game_of(MLB)}")
            assert mlb is not None, "stored before the 202"
            assert (mlb["home_score"], mlb["away_score"], mlb["status"]) == (3, 2, "final")
            nfl = stored_state(namespace, nfl_key)
            assert nfl is not None
            assert (nfl["home_score"], nfl["away_score"]) == (9, 11)
            assert await asyncio.to_thread(ingest.terminate, 60) == 0
            log = ingest.log_path.read_text()
            assert KEY not in log
            assert SECRET not in log
