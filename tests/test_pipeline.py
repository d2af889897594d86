"""End to end on both backends: the recorded night in, pushes out, each exactly once.

Expectations are computed here straight from the raw scoreboards and the generated audience, not
through goalhorn's adapter or expander, so a bug in either shows up as a mismatch.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

from goalhorn.keys import Keys, Platform
from goalhorn.models import Device
from goalhorn.pipeline import Pipeline
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers import Provider
from goalhorn.providers.console import ConsoleProvider
from goalhorn.providers.webhook import WebhookProvider
from goalhorn.redis_client import make_redis
from goalhorn.sandbox.audience import generate_audience
from goalhorn.sandbox.gamenight import Snapshot, load_gamenight
from goalhorn.sandbox.webhook_receiver import WebhookReceiver
from goalhorn.settings import Settings
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
    def provider(platform: Platform) -> Provider:
        return WebhookProvider(settings) if platform == "webhook" else ConsoleProvider(platform, out)

    async with Pipeline(settings, provider) as pipeline:
        for snap in snapshots:
            await pipeline.ingest_scoreboard(snap.body)
        return await pipeline.wait_idle(timeout_s=90)


async def test_every_follower_with_a_device_gets_each_goal_once(settings: Settings) -> None:
    settings = settings.model_copy(update={"webhook_allowlist": "127.0.0.1", "batch_size": 200})
    snapshots = load_gamenight()
    goals = goals_in(snapshots)
    assert len(goals) >= 10
    scoring_teams = Counter(team for _, team, _, _ in goals)
    teams = sorted({t for _, t, _, _ in goals} | {"idle-team"})

    secrets: dict[str, str] = {}
    out = io.StringIO()
    async with WebhookReceiver(secret_for=secrets.get) as receiver:
        audience = generate_audience(teams, users=3000, webhook_base_url=receiver.url, seed=11)
        secrets.update(audience.webhook_secrets)
        redis = make_redis(settings)
        try:
            await audience.load(PreferenceStore(redis, Keys(settings.namespace)))
            snap = await replay(settings, snapshots, out, receiver)
            # A restart that re-polls the whole night must not notify anyone again.
            again = await replay(settings, snapshots, out, receiver)
        finally:
            await redis.aclose()
            if settings.amqp_url:
                await delete_delivery_queues(settings)

    follows: dict[str, set[str]] = defaultdict(set)
    for user, team in audience.follows:
        follows[user].add(team)
    devices: dict[str, Device] = {d.device_id: d for d in audience.devices}
    expected = {
        device_id: sum(scoring_teams[team] for team in follows[device.user_id]) for device_id, device in devices.items()
    }

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
