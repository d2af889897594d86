"""A tiny run of bench/bench_expand.py: it measures what it says and leaves nothing behind in Redis."""

from __future__ import annotations

import re
import uuid

import redis

from bench import bench_expand
from goalhorn.settings import LOCAL_REDIS_URL
from tests.conftest import require_real_services


def test_bench_expand_runs_small_and_cleans_up(capsys) -> None:
    require_real_services()
    namespace = f"t{uuid.uuid4().hex[:12]}"
    argv = ["--users", "3000", "--chunk", "500", "--naive-sample", "200", "--namespace", namespace]
    assert bench_expand.main(argv) == 0
    out = capsys.readouterr().out
    assert "loaded 3,000 followers" in out
    expanded = re.findall(r"expander, (bloom|no-bloom): 3,000 members -> ([\d,]+) recipients", out)
    assert [name for name, _ in expanded] == ["bloom", "no-bloom"]
    assert len({count for _, count in expanded}) == 1, "the Bloom filter changes nothing in the result"
    assert "x naive" in out
    assert "first batch after" in out
    client = redis.Redis.from_url(LOCAL_REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"{namespace}:*")) == []
    finally:
        client.close()
