"""A tiny run of bench/bench_api.py: it measures what it says and leaves nothing behind in Redis."""

from __future__ import annotations

import uuid

import redis as sync_redis

from bench import bench_api
from bench.figures import Results
from goalhorn.settings import LOCAL_REDIS_URL
from tests.conftest import require_real_services


def test_bench_api_runs_small_and_cleans_up(capsys) -> None:
    require_real_services()
    namespace = f"bench-api-t{uuid.uuid4().hex[:8]}"  # its own, as other benches may run meanwhile
    args = ["--seconds", "0.5", "--connections", "4", "--clients", "20", "--namespace", namespace]
    results = Results("api")
    assert bench_api.main(args, results=results) == 0
    out = capsys.readouterr().out
    assert "x the bare route" in out
    assert "If-None-Match (304)" in out
    assert "POST /v1/users/{id}/devices" in out
    # every run registers devices of its own (201), then the same again (200): a run that repeated an
    # earlier run's devices measured the re-registration path and called it registration
    lines = [line.strip() for line in out.splitlines() if "statuses" in line]
    posts = [line for line in lines if line.startswith("POST /v1/users/{id}/devices ")]
    again = [line for line in lines if line.startswith("POST /v1/users/{id}/devices, known")]
    assert len(posts) == len(again) == 3
    assert all("statuses {'201':" in line and "'200'" not in line for line in posts), posts
    assert all("statuses {'200':" in line and "'201'" not in line for line in again), again
    assert "SSE fan-out to    20 clients" in out
    figures = {f.name: f for f in results.figures}
    get = figures["GET /v1/games/{id}: requests/s"]
    assert len(get.values) == 3
    assert get.baseline is not None
    assert get.baseline[0] == "bare Starlette route, same bytes"
    assert figures["POST /v1/users/{id}/devices, known device (200): requests/s"].baseline is not None
    assert len(figures["SSE fan-out to 20 clients: one update reached all"].values) == 3
    client = sync_redis.Redis.from_url(LOCAL_REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"{namespace}:*")) == []
    finally:
        client.close()
