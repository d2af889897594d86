"""End to end on both backends: the recorded night in, pushes out, each exactly once.

Expectations are computed here straight from the raw scoreboards and the generated audience, not
through goalhorn's adapter or expander, so a bug in either shows up as a mismatch.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from goalhorn.app.pipeline import Pipeline
from goalhorn.demo.audience import generate_audience
from goalhorn.demo.gamenight import Snapshot, load_gamenight
from goalhorn.keys import Keys, Platform
from goalhorn.models import Device
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.model import Preferences
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers import Provider
from goalhorn.providers.console import ConsoleProvider
from goalhorn.providers.webhook import WebhookProvider
from goalhorn.redis_client import make_redis
from goalhorn.sandbox.webhook_receiver import WebhookReceiver
from goalhorn.settings import Settings
from tests.conftest import delete_namespace
from tests.queues import delete_delivery_queues

GOAL_SPORTS = {"soccer", "hockey"}


def goals_in(snapshots: list[Snapshot]) -> list[tuple[str, str, int, int]]:
    """Goals as (game_id, scoring team id, home score, away score after it): every rise of a score.

    A score taken back (a correction) and scored again later is a new goal."""
    last: dict[str, tuple[int, int]] = {}
    goals: list[tuple[str, str, int, int]] = []
    for snap in snapshots:
        if snap.sport not in GOAL_SPORTS:
            continue
        for event in json.loads(snap.body)["events"]:
            comp = event["competitions"][0]
            side = {c["homeAway"]: c for c in comp["competitors"]}
            home, away = int(side["home"].get("score") or 0), int(side["away"].get("score") or 0)
            if event["id"] in last:
                h0, a0 = last[event["id"]]
                assert not (home > h0 and away > a0), "the night never has both teams scoring in one poll"
                for h in range(h0 + 1, home + 1):
                    goals.append((event["id"], side["home"]["team"]["id"], h, away))
                for a in range(a0 + 1, away + 1):
                    goals.append((event["id"], side["away"]["team"]["id"], home, a))
            last[event["id"]] = (home, away)
    return goals


def console_pushes(out: io.StringIO) -> list[tuple[str, str]]:
    """(device_id, intent_id) per console line."""
    rows = []
    for line in out.getvalue().splitlines():
        _, device_id, intent_id = line.split(" | ", 1)[0].split()
        rows.append((device_id, intent_id))
    return rows


async def replay(settings: Settings, snapshots: list[Snapshot], out: io.StringIO, receiver: WebhookReceiver):
    def provider(platform: Platform, render) -> Provider:
        if platform == "webhook":
            return WebhookProvider(settings, render=render)
        return ConsoleProvider(platform, out, render=render)

    async with Pipeline(settings, provider) as pipeline:
        for snap in snapshots:
            await pipeline.ingest_scoreboard(snap.body)
        return await pipeline.wait_idle(timeout_s=90)


GOAL_ONLY_RULES = """
segments:
  scoring_team_followers: {source: "team:{team_id}:followers"}
  match_watchers: {source: "match:{game_id}:watching"}
rules:
  goal:
    kinds: [GOAL]
    priority: 9
    segments: [scoring_team_followers, match_watchers]
    template: goal
templates:
  goal:
    en: {title: "GOAL! {team}", body: "{away_team} {away_score} - {home_score} {home_team} ({clock})"}
"""


def is_quiet_now(prefs: Preferences) -> bool:
    """Whether the user's quiet hours cover this moment, computed here from the wall clock."""
    if prefs.quiet_hours is None:
        return False
    local = datetime.now(UTC).astimezone(ZoneInfo(prefs.time_zone))
    start, end = prefs.quiet_hours.start, prefs.quiet_hours.end
    minute = local.hour * 60 + local.minute
    return start <= minute < end if start <= end else not end <= minute < start


def goals_owed(prefs: Preferences, goals_reaching_user: list[tuple[str, str]]) -> int:
    """How many of the (game, scoring team) goals reaching a user their preferences let through."""
    if "GOAL" in prefs.opted_out or is_quiet_now(prefs):
        return 0
    per_game = Counter(game for game, team in goals_reaching_user if team not in prefs.muted_teams)
    if prefs.cap is None:
        return sum(per_game.values())
    return sum(min(prefs.cap.max_alerts, n) for n in per_game.values())


async def test_every_follower_with_a_device_gets_each_goal_once(settings: Settings, tmp_path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOAL_ONLY_RULES)
    settings = settings.model_copy(
        update={"webhook_allowlist": "127.0.0.1", "batch_size": 200, "rules_file": str(rules)}
    )
    snapshots = load_gamenight()
    goals = goals_in(snapshots)
    assert len(goals) >= 10
    teams = sorted({t for _, t, _, _ in goals} | {"idle-team"})
    games = sorted({g for g, _, _, _ in goals} | {"idle-game"})

    secrets: dict[str, str] = {}
    out = io.StringIO()
    async with WebhookReceiver(secret_for=secrets.get) as receiver:
        audience = generate_audience(teams, users=3000, webhook_base_url=receiver.url, seed=11, game_ids=games)
        secrets.update(audience.webhook_secrets)
        redis = make_redis(settings)
        try:
            keys = Keys(settings.namespace)
            await audience.load(
                PreferenceStore(redis, keys, buckets=settings.preference_buckets),
                PreferenceBloom(redis, keys, buckets=settings.preference_buckets),
            )
            snap = await replay(settings, snapshots, out, receiver)
            # A restart that re-polls the whole night must not notify anyone again.
            again = await replay(settings, snapshots, out, receiver)
        finally:
            await delete_namespace(redis, settings.namespace)
            await redis.aclose()
            if settings.amqp_url:
                await delete_delivery_queues(settings)

    follows: dict[str, set[str]] = defaultdict(set)
    for user, team in audience.follows:
        follows[user].add(team)
    watches: dict[str, set[str]] = defaultdict(set)
    for user, game in audience.watches:
        watches[user].add(game)
    devices: dict[str, Device] = {d.device_id: d for d in audience.devices}
    owed: dict[str, int] = {}
    for user in {d.user_id for d in devices.values()}:
        reaching = [(g, t) for g, t, _, _ in goals if t in follows[user] or g in watches[user]]
        owed[user] = goals_owed(audience.preferences.get(user, Preferences()), reaching)
    expected = {device_id: owed[device.user_id] for device_id, device in devices.items()}
    suppressed = snap.counts
    assert all(suppressed.get(f"suppressed:{r}", 0) > 0 for r in ("opted_out", "muted", "quiet_hours", "capped"))
    both = [u for u in owed if any(t in follows[u] and g in watches[u] for g, t, _, _ in goals)]
    only_watching = [u for u in owed if any(t not in follows[u] and g in watches[u] for g, t, _, _ in goals)]
    assert both, "some users are reached through both segments (and must get each goal once)"
    assert only_watching, "some users are reached only by watching the match"

    deliveries = console_pushes(out) + [(w.endpoint, w.body["data"]["intent_id"]) for w in receiver.deliveries]
    per_pair = Counter(deliveries)
    assert per_pair, "somebody got something"
    assert max(per_pair.values()) == 1, "no device got the same goal twice"
    got = Counter(device_id for device_id, _ in deliveries)
    assert set(got) <= set(devices), "nobody outside the audience got anything"
    wrong = {d: (got[d], n) for d, n in expected.items() if got[d] != n}
    assert not wrong, f"{len(wrong)} devices got the wrong number of goals, e.g. {list(wrong.items())[:5]}"
    assert sum(expected.values()) > 1000
    assert {d.platform for d in devices.values() if got[d.device_id]} == {"fcm", "apns", "webhook"}

    assert snap.get("intents") == len(goals)
    assert snap.get("dead_letters") == 0
    assert again.get("intents") == len(goals), "the re-polled night made no new intents"
