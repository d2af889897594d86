"""The YAML catalog: validation with FILE:LINE problems, the CLI around it, hot reload, rendering."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from goalhorn.catalog import CatalogFile, default_catalog, load_catalog, parse_catalog
from goalhorn.catalog.located import CatalogInvalid
from goalhorn.intents.rules import intents_for
from goalhorn.keys import Keys
from goalhorn.models import Device, EventKind, GameEvent, Sport
from goalhorn.ops.cli import app
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import make_redis
from goalhorn.segmenter.definitions import Members, Op, SetKey, resolve
from goalhorn.settings import Settings
from tests.conftest import delete_namespace

GOOD = """\
segments:
  fans:
    source: "team:{team_id}:followers"
  watchers:
    source: "match:{game_id}:watching"
  bots: {static: [b1, b2]}
  fans_not_bots:
    difference:
      - union: [{segment: fans}, {segment: watchers}]
      - segment: bots
    filters: {platform: [fcm], locale: [es]}
rules:
  goal:
    kinds: [GOAL]
    priority: 9
    segments: [fans_not_bots]
    template: goal
    collapse_key: "goal:{game_id}"
templates:
  goal:
    en: {title: "GOAL {team}", body: "{home_score}-{away_score}"}
    es: {title: "GOL {team}", body: "{home_score}-{away_score}"}
"""

BAD = """\
segments:
  a:
    union:
      - segment: b
      - source: "team:{teem}:followers"
  b:
    segment: a
  c:
    source: "player:1:fans"
rules:
  r:
    kinds: [GOAL, NOPE]
    priority: 12
    segments: [zz]
    template: goal
    colour: red
"""


def goal_event(**changes) -> GameEvent:
    base = {
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
        "observed_at": datetime(2026, 3, 1, tzinfo=UTC),
    }
    return GameEvent(**{**base, **changes})


def test_a_good_catalog_resolves_its_segments_from_the_intent():
    catalog = parse_catalog(GOOD, "good.yaml")
    (intent,) = intents_for(goal_event(), catalog.rules, datetime(2026, 3, 1, tzinfo=UTC))
    assert intent.segments == ("fans_not_bots",)
    assert intent.collapse_key == "goal:g1"
    segment = catalog.segments["fans_not_bots"]
    resolved = resolve(segment, catalog.segments, {"team_id": "t1", "game_id": "g1"}, Keys("ns"))
    assert resolved == Op(
        "difference",
        (
            Op("union", (SetKey("ns:team:t1:followers"), SetKey("ns:match:g1:watching"))),
            Members(frozenset({b"b1", b"b2"})),
        ),
    )
    assert segment.admits("fcm", "es-MX")
    assert not segment.admits("apns", "es")
    assert not segment.admits("fcm", "en")


def test_every_problem_is_reported_with_its_line():
    with pytest.raises(CatalogInvalid) as caught:
        parse_catalog(BAD, "bad.yaml")
    problems = caught.value.problems
    assert "bad.yaml:2: segment cycle: a -> b -> a" in problems
    expected = [
        ("bad.yaml:5:", "unknown field {teem}"),
        ("bad.yaml:9:", "unknown source 'player:1:fans'"),
        ("bad.yaml:12:", "unknown event kind 'NOPE'"),
        ("bad.yaml:13:", "priority 12 is outside 0..9"),
        ("bad.yaml:14:", "unknown segment 'zz'"),
        ("bad.yaml:15:", "unknown template 'goal'"),
        ("bad.yaml:16:", "unknown key 'colour'"),
    ]
    for prefix, text in expected:
        assert any(p.startswith(prefix) and text in p for p in problems), (prefix, text, problems)
    assert len(problems) == len(expected) + 1


def test_segments_validate_cli(tmp_path):
    good, bad, binary, broken = (tmp_path / n for n in ("good.yaml", "bad.yaml", "bin.yaml", "broken.yaml"))
    good.write_text(GOOD)
    bad.write_text(BAD)
    binary.write_bytes(b"\x00\xff\xfe garbage")
    broken.write_text("rules: [1,\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["segments", "validate", str(good)])
    assert ok.exit_code == 0, ok.output
    for path in (bad, binary, broken):
        result = runner.invoke(app, ["segments", "validate", str(path)])
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line]
        assert lines, result.output
        assert all(line.startswith(f"{path}:") for line in lines), result.output
        assert "Traceback" not in result.output
    assert len(runner.invoke(app, ["segments", "validate", str(broken)]).output.strip().splitlines()) == 1


async def test_segments_preview_cli_counts_without_sending(tmp_path):
    settings = Settings(namespace=f"t{uuid.uuid4().hex[:12]}")
    redis = make_redis(settings)
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    phones = [Device(device_id=f"{u}-a", user_id=u, platform="fcm", address="tok", locale="es") for u in "pqrs"]
    await store.add_devices([*phones, Device(device_id="b1-a", user_id="b1", platform="fcm", address="t", locale="es")])
    await store.follow_teams([(u, "t1") for u in ("p", "q", "b1", "nodevice")])
    await store.watch_matches([("r", "g1"), ("s", "g2")])
    await store.mute_team("q", "t1")
    await redis.aclose()
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    event = goal_event().model_dump_json()
    env = {"GOALHORN_NAMESPACE": settings.namespace}
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["segments", "preview", str(rules), "--event", event], env=env
    )
    assert result.exit_code == 0, result.output
    assert "goal priority 9 -> fans_not_bots" in result.output
    assert "recipients: fcm 2, apns 0, webhook 0" in result.output  # p and r; q muted, b1 a bot
    assert "users: 4 (1 without a device)" in result.output
    assert "muted 1" in result.output
    bad = CliRunner().invoke(app, ["segments", "preview", str(rules), "--event", '{"kind": "GOAL"}'])
    assert bad.exit_code == 2
    assert "not a valid GameEvent" in bad.output


def test_a_bad_edit_keeps_the_last_good_version_and_a_good_one_is_picked_up(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    watched = CatalogFile(str(path))
    assert [r.priority for r in watched.current().rules] == [9]
    path.write_text(GOOD.replace("priority: 9", "priority: 42"))
    os.utime(path, ns=(1, 1))
    assert [r.priority for r in watched.current().rules] == [9], "the bad edit is rejected"
    assert watched.rejected == 1
    assert "outside 0..9" in watched.problems[0]
    path.write_text(GOOD.replace("priority: 9", "priority: 7"))
    os.utime(path, ns=(2, 2))
    assert [r.priority for r in watched.current().rules] == [7]
    assert watched.problems == []


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogInvalid, match=r"missing\.yaml:1: cannot read"):
        load_catalog(tmp_path / "missing.yaml")


def test_the_default_catalog_has_the_product_rules_and_renders_with_fallback():
    catalog = default_catalog()
    by_name = {r.name: r for r in catalog.rules}
    assert (by_name["goal"].priority, by_name["edge"].priority) == (9, 8)
    assert (by_name["period_end"].priority, by_name["final_whistle"].priority) == (5, 2)
    assert by_name["edge"].bypass_quiet_hours
    (intent,) = intents_for(goal_event(), catalog.rules, datetime(2026, 3, 1, tzinfo=UTC))
    assert intent.expires_at - intent.created_at == timedelta(seconds=300)
    assert catalog.render(intent, "pt-BR").title == "GOL! Arsenal"
    assert catalog.render(intent, "es").title == "¡GOL! Arsenal"
    assert catalog.render(intent, "de-AT").title == "GOAL! Arsenal"


async def test_a_running_pipeline_follows_edits_of_its_rules_file(settings: Settings, tmp_path) -> None:
    from goalhorn.app.pipeline import Pipeline
    from goalhorn.providers.console import ConsoleProvider
    from tests.queues import delete_delivery_queues

    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    settings = settings.model_copy(update={"rules_file": str(path)})
    out = io.StringIO()
    try:
        async with Pipeline(
            settings, lambda platform, render: ConsoleProvider(platform, out, render=render)
        ) as pipeline:
            await pipeline.publish_events([goal_event(event_id="e1")])
            assert (await pipeline.wait_idle(timeout_s=30)).get("intents") == 1
            path.write_text(GOOD.replace("kinds: [GOAL]", "kinds: [RED_CARD]"))
            os.utime(path, ns=(1, 1))
            await pipeline.publish_events([goal_event(event_id="e2")])
            assert (await pipeline.wait_idle(timeout_s=30)).get("intents") == 1, "goals no longer make intents"
            path.write_text("rules: [broken")
            os.utime(path, ns=(2, 2))
            await pipeline.publish_events([goal_event(event_id="e3")])
            assert (await pipeline.wait_idle(timeout_s=30)).get("intents") == 1, "the last good version serves"
            assert pipeline.catalog.rejected == 1
    finally:
        if settings.amqp_url:
            await delete_delivery_queues(settings)
        redis = make_redis(settings)
        await delete_namespace(redis, settings.namespace)
        await redis.aclose()
