"""``goalhorn trace``: the trace of a goal matches what the sandbox recorded, device for device."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from goalhorn.admin.trace import parse
from goalhorn.app.pipeline import Pipeline
from goalhorn.counters import PipelineCounters
from goalhorn.keys import Keys
from goalhorn.models import Device, EventKind, GameEvent, Sport, utcnow
from goalhorn.preferences.bloom import PreferenceBloom
from goalhorn.preferences.model import Preferences
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import make_redis
from goalhorn.sandbox.servers import SandboxServers
from tests.conftest import delete_namespace, make_settings
from tests.processes import read_records, real_env, run_command
from tests.queues import delete_delivery_queues

TEAM = "t-trace"


def audience(webhook_url: str, secret: str) -> list[Device]:
    devices = []
    for n in range(30):
        platform = ("fcm", "apns", "webhook")[n % 3]
        address = {
            "fcm": f"f{n:04d}" + "Ab9_-:" * 24,
            "apns": f"{n:064x}",
            "webhook": f"{webhook_url}/hooks/u{n}",
        }[platform]
        secret_of = secret if platform == "webhook" else None
        devices.append(Device(device_id=f"d{n}", user_id=f"u{n}", platform=platform, address=address, secret=secret_of))
    return devices


@pytest.mark.real
async def test_the_trace_of_a_goal_matches_the_sandbox_record_device_for_device(tmp_path: Path) -> None:
    record = tmp_path / "pushes.jsonl"
    async with SandboxServers(tmp_path / "sandbox", record=record) as servers:
        settings = servers.apply(make_settings("real", batch_size=4))
        keys = Keys(settings.namespace)
        devices = audience(servers.webhooks.url, servers.webhook_secret)
        try:
            async with Pipeline(settings) as pipeline:
                store = PreferenceStore(pipeline.redis, keys, buckets=settings.preference_buckets)
                await store.add_devices(devices)
                await store.follow_teams([(d.user_id, TEAM) for d in devices])
                muted = {"u0", "u1", "u2"}
                await store.set_preferences({u: Preferences(muted_teams=frozenset({TEAM})) for u in muted})
                await PreferenceBloom(pipeline.redis, keys, buckets=settings.preference_buckets).rebuild()
                event = GameEvent(
                    event_id=f"goal-{keys.namespace}",
                    kind=EventKind.GOAL,
                    source="espn",
                    game_id="g-trace",
                    sport=Sport.HOCKEY,
                    league="nhl",
                    team_id=TEAM,
                    team="Trace",
                    home_team="Trace",
                    away_team="Other",
                    home_score=1,
                    away_score=0,
                    period=1,
                    observed_at=utcnow(),
                )
                assert await pipeline.publish_events([event])
                await pipeline.wait_idle(60)
                env = real_env(GOALHORN_NAMESPACE=settings.namespace)
                result = await asyncio.to_thread(
                    run_command, ["trace", "--event", event.event_id, "--devices", "--json"], env
                )
                readable = await asyncio.to_thread(run_command, ["trace", "--event", event.event_id], env)
                counters = PipelineCounters(pipeline.redis, keys)
                stage_samples = [len(await counters.recent_latencies(s, 10)) for s in ("ingest", "fanout")]
                unknown = await asyncio.to_thread(run_command, ["trace", "nope"], env)
        finally:
            await delete_delivery_queues(settings)
            redis = make_redis(settings)
            await delete_namespace(redis, settings.namespace)
            await redis.aclose()

    assert result.returncode == 0, result.stderr
    (trace,) = json.loads(result.stdout)
    pushes = read_records(record)
    address = {d.address: d for d in devices}
    pushed = Counter(address[r.get("token") or r["url"]].device_id for r in pushes)
    assert set(pushed.values()) == {1}
    assert {d for d, state in trace["devices"].items() if state == "sent"} == set(pushed), "device for device"
    per_provider = Counter(address[r.get("token") or r["url"]].platform for r in pushes)
    assert {p: v["outcomes"].get("sent", 0) for p, v in trace["providers"].items()} == dict(per_provider)
    assert trace["recipients"] == len(devices) - len(muted) == sum(per_provider.values())
    assert trace["suppressed"]["muted"] == len(muted)
    assert {p: v["devices_queued"] for p, v in trace["providers"].items()} == dict(per_provider)
    assert sum(v["batches_queued"] for v in trace["providers"].values()) == sum(
        (n + 3) // 4 for n in per_provider.values()
    )
    timings = trace["timings_s"]
    assert 0 <= timings["intent_created"] <= timings["expand_started"] <= timings["expand_done"]
    for platform in per_provider:  # a batch may be delivered before the expansion has queued the last one
        assert timings["expand_started"] <= timings[f"{platform}_first_delivered"]
        assert timings[f"{platform}_first_delivered"] <= timings[f"{platform}_last_delivered"]
    assert readable.returncode == 0
    assert "suppressed: muted 3" in readable.stdout
    assert stage_samples == [1, 1], "the fanout sampled the ingest and its own latency of the goal"
    assert unknown.returncode == 1
    assert "nothing known of intent 'nope'" in unknown.stderr


def test_a_trace_reads_only_the_closed_fields() -> None:
    t = parse(
        "i-1",
        {
            "event_id": "e",
            "expand:recipients": "5",
            "expand:suppressed:capped": "2",
            "fcm:sent": "4",
            "fcm:dead_lettered": "1",
            "fcm:dead_lettered:attempts_exhausted": "1",
            "fcm:retry:UNAVAILABLE": "3",
            "fcm:first_at": "2026-11-30T00:00:01+00:00",
            "event_at": "2026-11-30T00:00:00+00:00",
            "sms:sent": "9",
        },
    )
    assert t.recipients == 5
    assert t.suppressed == {"opted_out": 0, "muted": 0, "quiet_hours": 0, "capped": 2}
    assert set(t.providers) == {"fcm"}
    fcm = t.providers["fcm"]
    assert (fcm.outcomes, fcm.dead_lettered, fcm.retried) == (
        {"sent": 4, "dead_lettered": 1},
        {"attempts_exhausted": 1},
        {"UNAVAILABLE": 3},
    )
    assert t.timings_s() == {"fcm_first_delivered": 1.0}
