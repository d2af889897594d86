from __future__ import annotations

from bench import bench_ingest


def test_the_ingest_benchmark_runs_at_a_tiny_size(capsys) -> None:
    assert bench_ingest.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "x json.loads" in out
    assert "fusion latency" in out
    for league in ("nba", "mlb", "nfl", "nhl", "statsperform"):
        assert f"{league} adapter:" in out
    assert "condition close_game_late:" in out
    assert "p99" in out
