"""A tiny run of bench/bench_expand.py: it measures what it says and leaves nothing behind in Redis."""

from __future__ import annotations

import re
import uuid

import redis

from bench import bench_expand
from bench.figures import Results
from goalhorn.settings import LOCAL_REDIS_URL
from tests.conftest import require_real_services


def test_bench_expand_runs_small_and_cleans_up(capsys) -> None:
    require_real_services()
    namespace = f"t{uuid.uuid4().hex[:12]}"
    argv = ["--users", "3000", "--chunk", "500", "--naive-sample", "200", "--rounds", "3", "--namespace", namespace]
    results = Results("expand")
    assert bench_expand.main(argv, results=results) == 0
    out = capsys.readouterr().out
    assert "loaded 3,000 followers" in out
    expanded = re.findall(r"expander, (bloom|no-bloom): 3,000 members -> ([\d,]+) recipients", out)
    assert [name for name, _ in expanded] == ["bloom"] * 3 + ["no-bloom"] * 3
    assert len({count for _, count in expanded}) == 1, "the Bloom filter changes nothing in the result"
    assert "x naive" in out
    assert "first batch after" in out
    members = {f.name: f for f in results.figures if f.name.endswith("members/s")}
    on = members["expander, Bloom filter on: members/s"]
    assert len(on.values) == 3
    assert on.baseline is not None
    assert on.baseline[0] == "bare SSCAN of the same set"
    assert on.target == ">= 0.4x"
    assert "| expander, Bloom filter off: members/s |" in results.markdown("python -m bench expand", "here")
    client = redis.Redis.from_url(LOCAL_REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"{namespace}:*")) == []
    finally:
        client.close()
