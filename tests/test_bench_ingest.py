from __future__ import annotations

from bench import bench_ingest
from bench.figures import Results


def test_the_ingest_benchmark_runs_at_a_tiny_size(capsys) -> None:
    results = Results("ingest")
    assert bench_ingest.main(["--quick"], results=results) == 0
    out = capsys.readouterr().out
    assert "x json.loads" in out
    assert "fusion latency" in out
    for league in ("nba", "mlb", "nfl", "nhl", "statsperform"):
        assert f"{league} adapter:" in out
    assert "condition close_game_late:" in out
    assert "p99" in out
    assert all(len(f.values) == 3 for f in results.figures), "every figure over three runs"
    espn = next(f for f in results.figures if f.name.startswith("ESPN adapter"))
    assert espn.baseline is not None
    assert espn.baseline[0] == "json.loads"
    assert espn.ratio() is not None
