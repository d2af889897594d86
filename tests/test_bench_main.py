"""python -m bench runs each bench in a process of its own and writes RESULTS.md from what they hand back."""

from __future__ import annotations

import re

from bench.__main__ import run_one
from bench.figures import Figure, Results, write_results
from tests.conftest import require_real_services


def test_a_bench_runs_in_its_own_process_and_hands_its_figures_back() -> None:
    results, code = run_one("ingest", ["--quick"])
    assert code == 0
    assert results.bench == "ingest"
    assert results.figures, "the figures came back from the child"
    assert all(len(f.values) == 3 for f in results.figures)
    espn = next(f for f in results.figures if f.name.startswith("ESPN adapter"))
    assert espn.baseline is not None
    assert espn.baseline[0] == "json.loads"


def test_a_bench_that_dies_or_overruns_is_a_failed_section_not_a_failed_suite() -> None:
    results, code = run_one("no_such_bench", [])
    assert code != 0
    assert any("no results" in note for note in results.notes)
    results, code = run_one("ingest", ["--runs", "x"])  # argparse exits: SystemExit is no Exception
    assert code != 0
    assert any("no results" in note for note in results.notes)
    results, code = run_one("ingest", [], timeout_s=0.5)
    assert code != 0
    assert any("stopped after" in note for note in results.notes), results.notes


def test_results_round_trip_through_json() -> None:
    results = Results("x", [Figure("f", [1.0, 2.0, 3.0], "ms", baseline=("b", 2.0), target="<= 1.3x")], ["n"])
    again = Results.from_json(results.to_json())
    assert again == results
    assert again.figures[0].verdict() == "ok"


def test_results_md_names_the_machine_and_date_in_its_header_and_every_section(tmp_path) -> None:
    require_real_services()
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## old (`python -m bench old`)\n\n| a | b |\n")
    section = Results("new", [Figure("f", [1.0, 2.0, 3.0], "s")]).markdown(
        "python -m bench new", "Run 2026-11-30 06:00 UTC on 2 cores (CPU), Python 3.11, RabbitMQ 3, Redis 7."
    )
    write_results({"new": section}, path, command="python -m bench new", took_s=90)
    text = path.read_text()
    header = text.split("\n## ", 1)[0]
    found = re.search(r"Last written (\d{4}-\d\d-\d\d \d\d:\d\d UTC) .*\(1\.5 min\) on (\d+) cores \((.+?)\), ", header)
    assert found, header
    for fact in ("Python 3.", "RabbitMQ 3.", "Redis "):
        assert fact in header
    assert "unreachable" not in header
    old = text.split("## old", 1)[1].split("\n## ", 1)[0]
    assert "not recorded" in old, "a kept section without its machine says so"
    assert "Run 2026-11-30 06:00 UTC on 2 cores" in text.split("## new", 1)[1]
