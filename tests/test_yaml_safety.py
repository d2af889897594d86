"""Reading a rules file is bounded and never raises past a FILE:LINE problem: YAML bombs, huge files,
deep nesting, recursive aliases and odd tags included."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from goalhorn.catalog import CatalogFile, load_catalog, parse_catalog
from goalhorn.catalog.located import MAX_ALIAS_VALUES, MAX_BYTES, MAX_DEPTH, CatalogInvalid
from goalhorn.ops.cli import app

LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)
"""Nine levels of nine aliases: 9**9 (387 million) strings once expanded, in 300-odd bytes."""


def problems_of(text: str) -> list[str]:
    with pytest.raises(CatalogInvalid) as caught:
        parse_catalog(text, "r.yaml")
    return caught.value.problems


def validate(path: Path) -> list[str]:
    result = CliRunner().invoke(app, ["segments", "validate", str(path)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()


def test_a_billion_laughs_is_refused_at_the_alias_that_crosses_the_budget_in_little_time_and_memory(tmp_path):
    assert len(LAUGHS.encode()) < 400
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    started = time.perf_counter()
    with pytest.raises(CatalogInvalid) as caught:
        load_catalog(path)
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        with pytest.raises(CatalogInvalid):
            load_catalog(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.problems == [
        f"{path}:5: not valid YAML: aliases expand to more than {MAX_ALIAS_VALUES:,} values"
    ]
    assert elapsed < 1.0, f"took {elapsed:.3f} s"
    assert peak < 50 * 1024 * 1024, f"peaked at {peak / 2**20:.1f} MiB"
    assert validate(path) == caught.value.problems


def test_aliases_within_the_budget_still_work():
    text = """\
segments:
  fans: &fans {source: "team:{team_id}:followers"}
  same_fans: *fans
rules:
  goal: {kinds: [GOAL], priority: 9, segments: &both [fans, same_fans], template: goal}
  again: {kinds: [SCORE], priority: 9, segments: *both, template: goal}
templates:
  goal:
    en: &en {title: "GOAL! {team}", body: "{home_score}-{away_score}"}
    es: *en
"""
    catalog = parse_catalog(text, "r.yaml")
    assert [rule.segments for rule in catalog.rules] == [("fans", "same_fans")] * 2
    assert catalog.templates["goal"]["es"] == catalog.templates["goal"]["en"]


def test_a_file_over_the_size_cap_is_one_problem_on_line_1_without_reading_it_all(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_BYTES // 10 + 1))
    assert validate(path) == [f"{path}:1: file is larger than {MAX_BYTES:,} bytes"]
    assert problems_of("#" * (MAX_BYTES + 1)) == [f"r.yaml:1: file is larger than {MAX_BYTES:,} bytes"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules: !!int 'abc'\n", "r.yaml:1: 'abc' is not a valid !!int"),
        ("rules:\n  r: {priority: !!int ''}\n", "r.yaml:2: '' is not a valid !!int"),
        ("rules: !!timestamp 2026-13-45\n", "r.yaml:1: '2026-13-45' is not a valid !!timestamp"),
        ("rules: !!timestamp yesterday\n", "r.yaml:1: 'yesterday' is not a valid !!timestamp"),
        ("rules: !!float fast\n", "r.yaml:1: 'fast' is not a valid !!float"),
        ("rules: !!bool maybe\n", "r.yaml:1: 'maybe' is not a valid !!bool"),
        ("rules: " + "1" * 5000 + "\n", "r.yaml:1: '" + "1" * 40 + "...' is not a valid !!int"),
        ("rules: !!python/object:os.system {}\n", "r.yaml:1: unsupported tag !!python/object:os.system"),
        ("rules: !!python/object/apply:os.system [ls]\n", "r.yaml:1: unsupported tag !!python/object/apply:os.system"),
        ("rules: !!python/name:os.system ''\n", "r.yaml:1: unsupported tag !!python/name:os.system on ''"),
        ("rules: !!binary aGk=\n", "r.yaml:1: unsupported tag !!binary on 'aGk='"),
        ("rules: !!set {a, b}\n", "r.yaml:1: unsupported tag !!set (use a plain mapping)"),
        ("rules: !custom thing\n", "r.yaml:1: unsupported tag !custom on 'thing'"),
        ("segments: &x [*x]\n", "r.yaml:1: not valid YAML: alias *x is inside its own anchor"),
        ("segments: &x\n  a: {b: *x}\n", "r.yaml:2: not valid YAML: alias *x is inside its own anchor"),
        ("segments: *nowhere\n", "r.yaml:1: not valid YAML: found undefined alias 'nowhere'"),
        ("segments:\n  a: 1\n  <<: {b: 2}\n", "r.yaml:3: merge keys (<<) are not supported"),
        ("segments:\n  ? [a, b]\n  : 1\n", "r.yaml:2: a key must be plain text, not a list or a mapping"),
        ("segments:\n  a: 1\nrules: 'x\x01'\n", "r.yaml:3: not valid YAML: unacceptable character #x0001"),
        ("rules: " + "[" * 200 + "]" * 200 + "\n", f"r.yaml:1: not valid YAML: nested deeper than {MAX_DEPTH} levels"),
        (
            f"a: &a {'[' * 40}x{']' * 40}\nb: {'[' * 12}*a{']' * 12}\n",
            f"r.yaml:2: not valid YAML: alias *a nests values deeper than {MAX_DEPTH} levels",
        ),
    ],
)
def test_odd_yaml_is_a_problem_on_its_line_never_a_traceback(tmp_path, text, problem):
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem), problems
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    lines = validate(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(problem.replace("r.yaml", str(path), 1))


def test_a_running_worker_keeps_its_catalog_when_a_bomb_is_swapped_in(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("segments: {}\n")
    watched = CatalogFile(str(path))
    first = watched.current()
    path.write_text(LAUGHS)
    started = time.perf_counter()
    assert watched.current() is first
    assert time.perf_counter() - started < 1.0
    assert watched.rejected == 1
    assert "aliases expand to more than" in watched.problems[0]
