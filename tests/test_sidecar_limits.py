"""Rate limits per key by tier, body caps, kill switches and the request deadline."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from goalhorn.settings import LOCAL_REDIS_URL, Settings
from goalhorn.sidecar.ratelimit import TIER_RATES
from tests.processes import Process, processes, real_env, run_command
from tests.support.api import SECRET, Api, running_api


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings) as api:
        yield api
        redis = api.app.state.services.redis
        async for key in redis.scan_iter(match=f"{settings.namespace}:*"):
            await redis.delete(key)


async def test_a_burst_then_the_steady_rate_and_retry_after_is_honoured(api: Api) -> None:
    client = await api.as_tenant("acme", tier="starter", scopes=("read", "write"))
    other = await api.as_tenant("acme", tier="starter", scopes=("read", "write"))
    rate = TIER_RATES["starter"]
    started = time.monotonic()
    await client.put("/v1/users/u1", json={})  # the first of the burst
    codes = [200]
    while codes[-1] == 200 and len(codes) < 3 * rate.burst:
        codes.append((await client.get("/v1/users/u1")).status_code)
    elapsed = time.monotonic() - started
    allowed = len(codes) - 1
    # the whole burst, plus what the steady rate refilled while it was being sent (timing-proof)
    assert rate.burst <= allowed <= rate.burst + math.ceil(elapsed * rate.per_s) + 1
    refused = await client.get("/v1/users/u1")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    wait = refused.json()["retry_after_s"]
    assert 0 < wait <= 1 / rate.per_s + 0.05
    # another key of the same tenant has its own bucket
    assert (await other.get("/v1/users/u1")).status_code == 200
    await asyncio.sleep(wait + 0.01)
    assert (await client.get("/v1/users/u1")).status_code == 200
    # at the steady rate nothing is refused; faster than it, all but what it refills are
    steady = []
    for _ in range(8):
        await asyncio.sleep(1 / rate.per_s + 0.01)
        steady.append((await client.get("/v1/users/u1")).status_code)
    assert steady == [200] * 8
    started = time.monotonic()
    fast = [(await client.get("/v1/users/u1")).status_code for _ in range(10)]
    assert fast.count(200) <= math.ceil((time.monotonic() - started) * rate.per_s) + 1


async def test_community_allows_five_then_one_a_second(api: Api) -> None:
    client = await api.as_tenant("acme", tier="community", scopes=("read",))
    codes = [(await client.get("/v1/games")).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    await asyncio.sleep(1.02)
    assert (await client.get("/v1/games")).status_code == 200
    assert (await client.get("/v1/games")).status_code == 429


async def test_a_kill_switch_turns_routes_off_in_every_process_without_a_restart(settings: Settings) -> None:
    async with running_api(settings) as one, running_api(settings) as two:
        admin = await one.as_tenant("ops", scopes=("admin",))
        user = await one.as_tenant("acme")
        elsewhere = httpx.AsyncClient(
            transport=two.client._transport, base_url="http://api", headers=dict(user.headers)
        )
        assert (await elsewhere.get("/v1/games")).status_code == 200
        assert (await user.put("/v1/admin/switches/games", json={"reason": "feed incident"})).status_code == 403
        assert (await admin.put("/v1/admin/switches/games", json={"reason": "feed incident"})).status_code == 204
        assert (await admin.get("/v1/admin/switches")).json() == {"games": "feed incident"}
        await asyncio.sleep(1.05)  # the other process reads the switches at most once a second
        off = await elsewhere.get("/v1/games")
        assert off.status_code == 503
        assert "feed incident" in off.json()["detail"]
        assert (await elsewhere.put("/v1/users/u1", json={})).status_code == 201  # other routes run on
        assert (await admin.put("/v1/admin/switches/put_user", json={"reason": "migration"})).status_code == 204
        assert (await user.put("/v1/users/u2", json={})).status_code == 503
        assert (await user.get("/v1/users/u1")).status_code == 200
        assert (await admin.delete("/v1/admin/switches/games")).status_code == 204
        assert (await admin.delete("/v1/admin/switches/put_user")).status_code == 204
        assert (await admin.delete("/v1/admin/switches/games")).status_code == 404
        await asyncio.sleep(1.05)
        assert (await elsewhere.get("/v1/games")).status_code == 200
        redis = one.app.state.services.redis
        async for key in redis.scan_iter(match=f"{settings.namespace}:*"):
            await redis.delete(key)


def test_a_request_past_its_deadline_gets_503_from_a_real_server(tmp_path: Path) -> None:
    """Redis stalls (a script busy for 2.5 s): a cached read gives up after 1 s, a write after 3 s."""
    env = real_env(GOALHORN_API_KEY_SECRET=SECRET)
    key = run_command(["keys", "create", "--tenant", "acme", "--scopes", "read,write"], env).stdout.split()[-1]
    with processes(tmp_path) as running:
        api = running["api"] = Process("api", ["run", "api", "--port", "0"], env, tmp_path).start()
        port = api.wait_for(r"on http://127\.0\.0\.1:(\d+)").group(1)
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{base}/v1/games/espn:1", headers=auth).status_code == 404
        stall = threading.Thread(target=_stall_redis, args=(2.5,))
        stall.start()
        time.sleep(0.2)
        started = time.monotonic()
        answer = httpx.get(f"{base}/v1/games/espn:1", headers=auth, timeout=10)
        took = time.monotonic() - started
        stall.join()
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert "deadline (1s)" in answer.json()["detail"]
        assert 0.9 < took < 1.8
        # after the stall the process serves again
        assert httpx.get(f"{base}/v1/games/espn:1", headers=auth).status_code == 404


def _stall_redis(seconds: float) -> None:
    client = sync_redis.Redis.from_url(LOCAL_REDIS_URL)
    try:
        client.eval(
            "local t = redis.call('TIME') local stop = t[1] * 1e6 + t[2] + ARGV[1] * 1e6 "
            "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= stop return 1",
            0,
            seconds,
        )
    finally:
        client.close()


async def test_tokens_taken_in_batches_never_exceed_the_limit_across_processes(settings: Settings) -> None:
    """Pro takes 12 tokens per Redis call; 400 concurrent requests through two processes still get at
    most the burst (plus what the rate refilled meanwhile), and nearly all of it."""
    rate = TIER_RATES["pro"]
    async with running_api(settings) as one, running_api(settings) as two:
        key = await one.key("acme", tier="pro", scopes=("read",))
        headers = {"Authorization": f"Bearer {key}"}
        clients = [
            httpx.AsyncClient(transport=api.client._transport, base_url="http://api", headers=headers)
            for api in (one, two)
        ]
        in_flight = asyncio.Semaphore(40)  # within a client's connection pool

        async def get(i: int) -> httpx.Response:
            async with in_flight:
                return await clients[i % 2].get("/v1/games")

        started = time.monotonic()
        answers = await asyncio.gather(*(get(i) for i in range(400)))
        elapsed = time.monotonic() - started
        allowed = sum(a.status_code == 200 for a in answers)
        refused = [a for a in answers if a.status_code == 429]
        redis = one.app.state.services.redis
        async for name in redis.scan_iter(match=f"{settings.namespace}:*"):
            await redis.delete(name)
    assert allowed + len(refused) == 400
    assert allowed <= rate.burst + math.ceil(elapsed * rate.per_s)
    assert allowed >= rate.burst - 2 * 12, "tokens held by a process are at most one batch"
    assert all(r.headers["retry-after"] == "1" for r in refused)
