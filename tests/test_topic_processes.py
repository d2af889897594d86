"""FCM topics as a user runs them: ``goalhorn sandbox``, ``goalhorn topics sync``, ``goalhorn run
fanout`` and ``goalhorn run deliver`` each in its own process on RabbitMQ and Redis, with
``GOALHORN_FCM_TOPICS=true``. A goal reaches every eligible phone exactly once (most through one topic
message per locale), nobody excluded, as the sandbox's record shows."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

from goalhorn.bus.rabbitmq import RabbitBus
from goalhorn.keys import Keys
from goalhorn.models import Device
from goalhorn.preferences.model import Preferences
from goalhorn.preferences.store import PreferenceStore
from goalhorn.redis_client import make_redis
from goalhorn.settings import Settings
from tests.processes import Process, exports, free_port, processes, read_records, real_env, run_command
from tests.support.builders import make_intent

PLAIN, WITH_PREFS, MUTED = 300, 20, 15


async def wait_records(path: Path, n: int, timeout_s: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_records(path)
        if len(records) >= n or time.monotonic() > deadline:
            await asyncio.sleep(1.0)  # anything more (a duplicate) would show up now
            return read_records(path)
        await asyncio.sleep(0.1)


async def test_a_goal_through_topics_reaches_each_eligible_phone_once(tmp_path: Path) -> None:
    env = real_env(GOALHORN_FCM_TOPICS="true", GOALHORN_BATCH_SIZE="50", GOALHORN_WORKER_THREADS="2")
    settings = Settings(
        amqp_url=env["GOALHORN_AMQP_URL"], redis_url=env["GOALHORN_REDIS_URL"], namespace=env["GOALHORN_NAMESPACE"]
    )
    redis = make_redis(settings)
    record = tmp_path / "pushes.jsonl"
    store = PreferenceStore(redis, Keys(settings.namespace), buckets=settings.preference_buckets)
    plain = [f"plain{n}" for n in range(PLAIN)]
    custom = [f"custom{n}" for n in range(WITH_PREFS)]
    muted = [f"muted{n}" for n in range(MUTED)]
    everyone = plain + custom + muted
    devices = [
        Device(platform="fcm", device_id=f"{u}-p", user_id=u, address=f"{u}-token", locale="fr" if n % 3 else "en")
        for n, u in enumerate(everyone)
    ]
    await store.follow_teams([(u, "t1") for u in everyone])
    await store.add_devices(devices)
    await store.set_preferences({u: Preferences(muted_teams=frozenset({"other"})) for u in custom})
    await store.set_preferences({u: Preferences(muted_teams=frozenset({"t1"})) for u in muted})
    try:
        with processes(tmp_path) as running:
            ports = ["--fcm-port", str(free_port()), "--apns-port", str(free_port())]
            ports += ["--webhook-port", str(free_port())]
            args = ["sandbox", "--dir", str(tmp_path / "sb"), "--record", str(record), "--topic-fanout-per-s", "5000"]
            sandbox = running["sandbox"] = Process("sandbox", [*args, *ports], env, tmp_path).start()
            sandbox.wait_for(r"^export GOALHORN_WEBHOOK_ALLOWLIST=")
            env.update(exports(sandbox.lines))

            synced = run_command(["topics", "sync", "t1"], env)
            assert synced.returncode == 0, synced.stderr
            assert "in_sync=True" in synced.stdout, synced.stdout

            for name in ("deliver", "fanout"):
                running[name] = Process(name, ["run", name, "--metrics-port", "0"], env, tmp_path).start()
            for name in ("deliver", "fanout"):
                running[name].wait_for(r"running \(namespace")

            bus = RabbitBus(settings)
            try:
                await bus.start([Keys(settings.namespace).intent_queue])
                goal = make_intent("goal-topics").model_copy(update={"segments": ("scoring_team_followers",)})
                await bus.publish(Keys(settings.namespace).intent_queue, goal.to_json(), priority=9, message_id="g")
            finally:
                await bus.aclose()

            records = await wait_records(record, PLAIN + WITH_PREFS)
            traced = run_command(["trace", "goal-topics", "--json"], env)
            readable = run_command(["trace", "goal-topics"], env)
    finally:
        await redis.aclose()
    got = Counter(r["token"] for r in records if r.get("intent_id") == "goal-topics")
    assert set(got.values()) == {1}, "no phone twice"
    assert set(got) == {f"{u}-token" for u in plain + custom}, "every eligible phone, and no muted one"
    via = Counter(r.get("via", "token") for r in records)
    assert via == {"topic": PLAIN, "token": WITH_PREFS}
    assert {r["topic"].rsplit(".", 2)[1] for r in records if r.get("via") == "topic"} == {"en", "fr"}

    assert traced.returncode == 0, traced.stderr
    (trace,) = json.loads(traced.stdout)
    assert (trace["topic_messages"], trace["topic_members"], trace["recipients"]) == (2, PLAIN, WITH_PREFS)
    fcm = trace["providers"]["fcm"]
    assert (fcm["topic_messages_queued"], fcm["devices_queued"]) == (2, WITH_PREFS)
    assert fcm["outcomes"] == {"sent": WITH_PREFS + 2}  # a topic message is one "device" of its own batch
    assert f"FCM topics: 2 topic message(s) for {PLAIN} subscribed phones, {WITH_PREFS} devices per token" in (
        readable.stdout.replace("\n", " ")
    )
