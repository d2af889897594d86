"""Message templates: what validation refuses (FILE:LINE of the offending text), and that rendering
an intent either gives a bounded title and body or fails with RenderFailed, never anything else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from goalhorn.catalog import Catalog, parse_catalog
from goalhorn.catalog.located import CatalogInvalid
from goalhorn.catalog.templates import (
    EDGE_FIELDS,
    GAME_FIELDS,
    MAX_BODY,
    MAX_SPEC,
    MAX_TITLE,
    OPTIONAL_FIELDS,
    RenderFailed,
)
from goalhorn.intents.edge import edge_intents
from goalhorn.intents.rules import intents_for
from goalhorn.models import EdgeSignal, EventKind, GameEvent, GameState, GameStatus, Intent, Sport
from goalhorn.ops.cli import app

NOW = datetime(2026, 3, 1, tzinfo=UTC)

HEAD = """\
segments:
  fans: {source: "team:{team_id}:followers"}
rules:
  goal: {kinds: [GOAL], priority: 9, segments: [fans], template: goal}
templates:
  goal:
    en: {title: "GOAL! {team}", body: "{home_team} {home_score}-{away_score} {away_team}"}
"""
"""A valid catalog; a test appends a template to it (the appended text starts on line 8)."""


def with_template(title: str, body: str = "ok", locale: str = "es") -> str:
    return HEAD + f"    {locale}:\n      title: {title!r}\n      body: {body!r}\n"


def goal_event(**changes: object) -> GameEvent:
    base: dict[str, object] = {
        "event_id": "e1",
        "kind": EventKind.GOAL,
        "source": "espn",
        "game_id": "g1",
        "sport": Sport.SOCCER,
        "league": "eng.1",
        "team_id": "t1",
        "team": "Arsenal",
        "home_team": "Arsenal",
        "away_team": "Chelsea",
        "home_score": 1,
        "away_score": 0,
        "period": 1,
        "observed_at": NOW,
    }
    return GameEvent(**{**base, **changes})


def intent(template: str = "goal", **data: str) -> Intent:
    return Intent(
        intent_id="i1",
        event_id="e1",
        kind=EventKind.GOAL,
        sport=Sport.SOCCER,
        game_id="g1",
        priority=9,
        segments=("fans",),
        template=template,
        data={"team": "Arsenal", "home_team": "Arsenal", "away_team": "Chelsea", **data},
        event_at=NOW,
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
    )


BAD_TITLES = [
    ("{team[99]}", "reaches into a value"),
    ("{team.__class__.__mro__}", "reaches into a value"),
    ("{0}", "positional field {0}"),
    ("GOAL {}", "empty field {}"),
    ("GOAL {", "Single '{' encountered"),
    ("GOAL }", "Single '}' encountered"),
    ("{teem}", "unknown field {teem}"),
    ("{team!r}", "conversions (!r, !s, !a) are not allowed"),
    ("{team!s}", "conversions (!r, !s, !a) are not allowed"),
    ("{team:>20000}", f"width 20000 is over {MAX_SPEC}"),
    ("{team:.99999}", f"precision 99999 is over {MAX_SPEC}"),
    ("{team:{clock}}", "format spec '{clock}'"),
    ("{team:,}", "format spec ','"),
    ("{team:=10}", "format spec '=10'"),
    ("{team:d}", "format spec 'd'"),
    ("x" * (MAX_TITLE + 1), f"at least {MAX_TITLE + 1} characters; at most {MAX_TITLE} are sent"),
    ("{team:>80}" + "y" * 30, f"at least 110 characters; at most {MAX_TITLE} are sent"),
]


@pytest.mark.parametrize(("title", "message"), BAD_TITLES)
def test_segments_validate_refuses_a_title_that_would_fail_or_misbehave_at_send_time(tmp_path, title, message):
    path = tmp_path / "rules.yaml"
    path.write_text(with_template(title))
    result = CliRunner().invoke(app, ["segments", "validate", str(path)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"{path}:9: template 'goal' locale 'es' title"), lines[0]  # the title's line
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_the_body_of_every_locale_is_checked_too():
    text = with_template("ok", "{team[0]}", "fr") + "    de: {title: '{0}', body: '{home_team.upper}'}\n"
    with pytest.raises(CatalogInvalid) as caught:
        parse_catalog(text, "r.yaml")
    assert caught.value.problems == [
        "r.yaml:10: template 'goal' locale 'fr' body: field {team[0]} reaches into a value: "
        "only plain fields like {team} are allowed",
        "r.yaml:11: template 'goal' locale 'de' body: field {home_team.upper} reaches into a value: "
        "only plain fields like {team} are allowed",
        "r.yaml:11: template 'goal' locale 'de' title: positional field {0}: name a field, e.g. {team}",
    ]


def test_a_body_may_not_be_longer_than_what_is_sent():
    with pytest.raises(CatalogInvalid, match=f"body is at least {MAX_BODY + 1} characters"):
        parse_catalog(with_template("ok", "b" * (MAX_BODY + 1)), "r.yaml")


def test_plain_specs_and_escaped_braces_render():
    catalog = parse_catalog(with_template("{{GOAL}} {team:.10} {clock:>6} {player:^12s}", "{league:-<8}"), "r.yaml")
    rendered = catalog.render(intent(team="Borussia Mönchengladbach", clock="90+4'", league="ger.1"), "es")
    assert rendered.title == "{GOAL} Borussia M  90+4'             "
    assert rendered.body == "ger.1---"


MIXED = """\
segments:
  fans: {source: "team:{team_id}:followers"}
rules:
  goal: {kinds: [GOAL], priority: 9, segments: [fans], template: odds}
  edge: {kinds: [EDGE], priority: 8, segments: [fans], template: goal}
  both: {kinds: [GOAL, EDGE], priority: 8, segments: [fans], template: teams}
templates:
  goal:
    en: {title: "GOAL! {team}", body: "{home_score}-{away_score}"}
  odds:
    en: {title: "{side} at {ask}", body: "{home_team}"}
  teams:
    en: {title: "{home_team} v {away_team}", body: "{league}"}
"""


def test_a_rule_may_only_use_a_template_whose_fields_its_intents_carry():
    with pytest.raises(CatalogInvalid) as caught:
        parse_catalog(MIXED, "r.yaml")
    assert caught.value.problems == [
        "r.yaml:4: template 'odds' uses {ask}, which GOAL intents lack",
        "r.yaml:4: template 'odds' uses {side}, which GOAL intents lack",
        "r.yaml:5: template 'goal' uses {team}, which EDGE intents lack",
    ]


def test_key_and_id_templates_only_name_fields():
    text = HEAD.replace('"team:{team_id}:followers"', '"team:{team_id!r}:followers"').replace(
        "template: goal}", 'template: goal, collapse_key: "goal:{game_id:>9999}"}'
    )
    with pytest.raises(CatalogInvalid) as caught:
        parse_catalog(text, "r.yaml")
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("r.yaml:2:")
    assert "conversions (!r, !s, !a) are not allowed" in problems[0]
    assert problems[1].startswith("r.yaml:4:")
    assert "no format spec is allowed here" in problems[1]


def test_the_known_fields_are_the_ones_intents_carry():
    """The catalog cannot import the intents (they import it): this keeps its field lists honest."""
    (goal,) = intents_for(goal_event(player="Saka"), parse_catalog(HEAD, "r.yaml").rules, NOW)
    assert set(goal.data) == GAME_FIELDS
    (no_scorer,) = intents_for(goal_event(), parse_catalog(HEAD, "r.yaml").rules, NOW)
    assert GAME_FIELDS - set(no_scorer.data) == OPTIONAL_FIELDS
    valid = MIXED.replace("template: odds", "template: teams").replace("template: goal}", "template: teams}")
    edge_rules = [rule for rule in parse_catalog(valid, "r.yaml").rules if rule.name == "edge"]
    state = GameState(
        game_id="g1",
        source="espn",
        sport=Sport.SOCCER,
        league="eng.1",
        status=GameStatus.LIVE,
        home_team="Arsenal",
        away_team="Chelsea",
        home_team_id="t1",
        away_team_id="t2",
        home_score=1,
        away_score=0,
        period=1,
        observed_at=NOW,
    )
    signal = EdgeSignal(
        token_id="tok",
        game_id="g1",
        side="home",
        fair=0.6,
        ask=0.5,
        edge_cents=10.0,
        book_age_s=0.1,
        state_age_s=0.2,
        created_at=NOW,
    )
    (edge,) = edge_intents(signal, state, edge_rules, NOW)
    assert set(edge.data) == EDGE_FIELDS


def test_a_template_that_got_in_unvalidated_fails_to_render_with_render_failed():
    catalog = Catalog(
        rules=(),
        segments={},
        templates={
            "index": {"en": ("GOAL {team[99]}", "x")},
            "attr": {"en": ("{team.__class__.__mro__}", "x")},
            "positional": {"en": ("{0}", "x")},
            "brace": {"en": ("GOAL {", "x")},
            "wide": {"en": ("{team:>20000}", "x")},
            "convert": {"en": ("{team!r}", "x")},
            "nolocale": {"de": ("{team}", "x")},
        },
    )
    for name in catalog.templates:
        with pytest.raises(RenderFailed, match=f"template '{name}'"):
            catalog.render(intent(name), "en")
    with pytest.raises(RenderFailed, match="unknown message template 'gone'"):
        catalog.render(intent("gone"), "en")


def test_a_missing_field_fails_to_render_and_an_optional_one_renders_empty():
    catalog = parse_catalog(with_template("{team}: {player}", "{clock}"), "r.yaml")
    with pytest.raises(RenderFailed, match="template 'goal' needs field 'clock', which the intent lacks"):
        catalog.render(intent(), "es")
    assert catalog.render(intent(clock="9'"), "es").title == "Arsenal: "


def test_long_values_are_cut_to_what_is_sent():
    catalog = parse_catalog(HEAD, "r.yaml")
    rendered = catalog.render(intent(team="A" * 5000, home_score="1" * 5000, away_score="0"), "en")
    assert len(rendered.title) == MAX_TITLE
    assert rendered.title.endswith("…")
    assert rendered.title.startswith("GOAL! AAAA")
    assert len(rendered.body) == MAX_BODY
    assert rendered.body.endswith("…")
