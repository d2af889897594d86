"""Rule conditions: the grammar, its types and nulls, FILE:LINE errors, random expressions that either
parse and evaluate or are rejected with a line, and the packaged close-game and upset rules."""

from __future__ import annotations

import json
import re
import string
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from goalhorn.catalog import parse_catalog
from goalhorn.catalog.conditions import FIELDS, ConditionError, parse_condition
from goalhorn.catalog.located import CatalogInvalid
from goalhorn.ingest.facts import WinFacts
from goalhorn.ingest.winprob import WinModel
from goalhorn.intents.rules import event_facts, intents_for
from goalhorn.models import EventKind, GameEvent, Sport
from goalhorn.ops.cli import app

AT = datetime(2026, 3, 1, tzinfo=UTC)


def event(**changes) -> GameEvent:
    base = {
        "event_id": "e1",
        "kind": EventKind.BASKET,
        "source": "sportradar",
        "game_id": "g1",
        "sport": Sport.BASKETBALL,
        "league": "nba",
        "team_id": "bos",
        "team": "BOS",
        "home_team": "BOS",
        "away_team": "NYK",
        "home_score": 100,
        "away_score": 99,
        "home_score_before": 97,
        "away_score_before": 99,
        "period": 4,
        "clock_s": 90.0,
        "display_clock": "1:30",
        "observed_at": AT,
    }
    return GameEvent(**{**base, **changes})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("lead_changed and period >= 4", True),
        ("abs(margin) <= 3 and seconds_left <= 120", True),
        ("team_margin == 1 and points == 3 and is_home", True),
        ("kind == 'BASKET' and sport != \"hockey\"", True),
        ("not tied and (margin + 1) * 2 / 4 == 1", True),
        ("-margin < 0 and max(home_score, away_score, 50) == 100 and min(1, 2) == 1", True),
        ("period > 4 or seconds_left > 120", False),
        ("win_prob_before < 0.2", False),  # unknown without the model: never true
        ("not (win_prob_before < 0.2)", False),  # nor is its negation
        ("win_prob_before < 0.2 or period == 4", True),  # unknown or true is true
        ("margin / 0 == 1", False),
    ],
)
def test_conditions_evaluate_over_an_events_facts(source: str, expected: bool) -> None:
    assert parse_condition(source).test(event_facts(event())) is expected


@pytest.mark.parametrize(
    ("source", "message", "column"),
    [
        ("period and 3", "and needs a bool, not a number", 8),
        ("abs(lead_changed)", "abs() needs a number, not a bool", 1),
        ("score > 1", "unknown field 'score'", 1),
        ("'x' < 2", "< needs a number, not a text", 5),
        ("period", "must be true or false, not a number", 1),
        ("(period > 1", "parenthesis at column 1 is not closed", 12),
        ("period >", "ends too early", 9),
        ("kind == 3", "compares a text with a number", 6),
        ("eval('1') == 1", "unknown field 'eval'", 1),
        ("period.__class__ == 1", "unexpected '.'", 7),
        ("abs(1, 2) > 0", "abs takes one number", 1),
        ("(" * 40 + "true" + ")" * 40, "nested too deeply", 34),
    ],
)
def test_bad_conditions_are_refused_with_the_column(source: str, message: str, column: int) -> None:
    with pytest.raises(ConditionError, match=re.escape(message)) as caught:
        parse_condition(source)
    assert caught.value.column == column


RULES = """\
segments:
  watchers: {{source: "match:{{game_id}}:watching"}}
rules:
  late:
    kinds: [BASKET]
    priority: 5
    segments: [watchers]
    template: t
    when: {when}
templates:
  t:
    en: {{title: "{{team}}", body: "{{home_score}}"}}
"""


def test_a_bad_condition_is_a_file_line_error_in_segments_validate(tmp_path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(when='"seconds_left <= 120 and score_gap < 3"'))
    result = CliRunner().invoke(app, ["segments", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:9: when 'seconds_left <= 120 and score_gap < 3': unknown field 'score_gap'" in result.output
    path.write_text(RULES.format(when="true"))
    result = CliRunner().invoke(app, ["segments", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:9: when must be a condition" in result.output


def test_a_rule_with_a_condition_takes_only_the_events_that_meet_it() -> None:
    catalog = parse_catalog(RULES.format(when='"period >= 4 and seconds_left <= 120 and abs(margin) <= 3"'), "r.yaml")
    assert len(intents_for(event(), catalog.rules, AT)) == 1
    assert intents_for(event(clock_s=300.0), catalog.rules, AT) == []
    assert intents_for(event(home_score=110), catalog.rules, AT) == []
    assert intents_for(event(period=3), catalog.rules, AT) == []


TOKENS = [
    *FIELDS,
    "abs",
    "min",
    "max",
    "and",
    "or",
    "not",
    "true",
    "false",
    "(",
    ")",
    ",",
    "<",
    "<=",
    ">",
    ">=",
    "==",
    "!=",
    "+",
    "-",
    "*",
    "/",
    "0",
    "3",
    "0.5",
    "120",
    "'GOAL'",
    '"nba"',
    "nope",
    "#",
    "'",
    "__import__",
    ".",
]
FACT = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-1000, 1000))


@st.composite
def facts(draw: st.DrawFn) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, (kind, _) in FIELDS.items():
        if kind == "number":
            out[name] = draw(FACT)
        elif kind == "bool":
            out[name] = draw(st.one_of(st.none(), st.booleans()))
        else:
            out[name] = draw(st.one_of(st.none(), st.text(string.ascii_letters, max_size=5)))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=25), spaces=st.booleans(), values=facts())
def test_random_conditions_either_evaluate_without_error_or_are_refused_with_a_line(
    tokens: list[str], spaces: bool, values: dict[str, object]
) -> None:
    source = (" " if spaces else "").join(tokens)
    column: int | None = None
    try:
        condition = parse_condition(source)
    except ConditionError as exc:
        column = exc.column
    if column is None:
        assert condition.test(values) in (True, False)  # type: ignore[arg-type]
        parse_catalog(RULES.format(when=json.dumps(source)), "r.yaml")
        return
    assert 1 <= column <= len(source) + 1
    with pytest.raises(CatalogInvalid) as caught:
        parse_catalog(RULES.format(when=json.dumps(source)), "r.yaml")
    assert [p for p in caught.value.problems if p.startswith("r.yaml:9: when")], caught.value.problems


def test_the_packaged_upset_rule_fires_on_a_swing_and_not_on_a_favourites_score() -> None:
    from goalhorn.catalog import default_catalog

    rules = default_catalog().rules
    wins = WinFacts(WinModel())
    # Down 3 with 40 s left, a three ties it; then a three that puts the leader further ahead.
    swing = event(home_score=99, home_score_before=96, clock_s=40.0)
    extend = event(home_score=102, home_score_before=99, away_score=96, away_score_before=96, clock_s=40.0)
    swung = wins(swing)
    assert swung["win_prob_before"] < 0.2 <= 0.5 <= swung["win_prob_after"]  # type: ignore[operator]
    assert "upset_alert" in {i.template for i in intents_for(swing, rules, AT, swung)}
    assert "upset_alert" not in {i.template for i in intents_for(extend, rules, AT, wins(extend))}
    assert "upset_alert" not in {i.template for i in intents_for(swing, rules, AT)}, "no model, no upset"
    assert wins(event(team=None, team_id=None)) == {}


def test_the_packaged_close_game_rule_takes_late_baskets_of_a_close_game_only() -> None:
    from goalhorn.catalog import default_catalog

    rules = default_catalog().rules

    def close(**changes) -> bool:
        return "close_game_late" in {i.template for i in intents_for(event(**changes), rules, AT)}

    assert close()
    assert not close(clock_s=200.0)
    assert not close(period=2)
    assert not close(home_score=110)
    assert close(
        kind=EventKind.GOAL,
        sport=Sport.HOCKEY,
        league="nhl",
        period=4,
        home_score=3,
        away_score=2,
        home_score_before=2,
        away_score_before=2,
    )
    assert not close(
        kind=EventKind.GOAL,
        sport=Sport.HOCKEY,
        league="nhl",
        home_score=4,
        away_score=2,
        home_score_before=3,
        away_score_before=2,
    )  # a goal that only adds to a lead
