"""bench e2e at a tiny scale (CI does not run the bench): a goal through the deployed processes reaches
each of 200 followers exactly once by the ledger, the figures are filled in, and the ledger does see a
second copy sent to every device."""

from __future__ import annotations

import asyncio
import json
from typing import IO, cast

import pytest

from bench.bare_loops import run_bare_loops
from bench.bench_e2e import one_goal, print_run, report_topics, topics_case
from bench.deployment import Audience, Deployment, _LineStream, store_audience
from bench.figures import Figure, Results
from goalhorn.admin.subscribers import import_subscribers
from goalhorn.keys import Keys
from goalhorn.preferences.model import decode_devices
from goalhorn.redis_client import Redis, make_redis
from tests.conftest import delete_namespace, make_settings, require_real_services

SECRET = "whsec_" + "QUJD" * 8

pytestmark = [pytest.mark.real, pytest.mark.timeout(240)]


def test_a_goal_reaches_200_followers_once_and_a_resend_shows_as_duplicates(tmp_path) -> None:
    require_real_services()
    with Deployment(tmp_path) as deployment:
        audience = asyncio.run(deployment.load_audience("smoke", 200))
        assert audience.counts() == {"fcm": 120, "apns": 70, "webhook": 10}
        deployment.start_stages(fanout=1, deliver=1)

        async def goal_then_resend():
            figures = await one_goal(deployment, audience, "200", 1, 1, 120.0)
            intent_id = next(iter(deployment.ledger.report().intents))
            intent = deployment.ledger.intent(intent_id)
            await run_bare_loops(deployment.settings(), audience, intent, deployment.webhook_secret)
            await deployment.close_bus()
            return figures, intent_id

        figures, intent_id = asyncio.run(goal_then_resend())
        print_run(figures)
        assert figures.exactly_once, figures
        assert (figures.delivered, figures.lost, figures.duplicated, figures.strays) == (200, 0, 0, 0)
        assert figures.first_s is not None
        assert figures.last_s is not None
        assert 0 < figures.first_s <= figures.last_s
        assert figures.expired == 0
        assert figures.worker_cpu_s > 0
        assert set(figures.stages) == {"queued", "expanding", "after_expansion"}
        assert deployment.peak_rss_mb("deliver-1") > 0

        again = deployment.ledger.wait(60.0, 0.5, idle_s=5.0)
        tally = again.intents[intent_id]
        assert (tally.once, tally.duplicated, tally.extra) == (0, 200, 200)
        assert tally.per_provider == {"fcm": 240, "apns": 140, "webhook": 20}
        assert not again.exactly_once

    results = Results("e2e")
    results.add(Figure("200: deliveries/s", [figures.rate], "pushes/s", baseline=("bare loops", 1.0), target=">= 0.7x"))
    section = results.markdown("python -m bench e2e", "Run now.")
    assert "| 200: deliveries/s |" in section
    assert ">= 0.7x ok" in section


async def _stored(redis: Redis, namespace: str) -> dict[str, object]:
    """Everything under ``namespace``, by key without the namespace; the times a write stamps left out
    (devices' added_at, the last-seen times, the epoch's id and time), what they stamp kept."""
    keys = Keys(namespace)
    seen_prefix = keys.last_seen_bucket(0).split("{")[0]
    out: dict[str, object] = {}
    async for raw_key in redis.scan_iter(match=keys.pattern(), count=1000):
        key = raw_key.decode()
        short = key.removeprefix(namespace)
        kind = cast(bytes, await redis.type(key)).decode()
        if kind == "set":
            out[short] = sorted(await redis.smembers(key))
        elif kind == "hash":
            fields = cast(dict[bytes, bytes], await redis.hgetall(key))
            if any(key == keys.device_bucket(b) for b in range(64)):
                out[short] = {
                    u: [d.model_copy(update={"added_at": None}) for d in decode_devices(v)] for u, v in fields.items()
                }
            elif key.startswith(seen_prefix):
                out[short] = {u: sorted(json.loads(v)) for u, v in fields.items()}
            elif short.endswith("epoch"):
                out[short] = sorted(fields)
            else:
                out[short] = fields
        else:
            out[short] = kind
    return out


def test_the_bulk_loader_stores_what_an_import_of_the_same_lines_stores() -> None:
    """``store_audience`` (the bench's fast path) against ``import_subscribers`` of ``Audience.lines``."""
    require_real_services()

    async def both() -> tuple[dict[str, object], dict[str, object]]:
        found = []
        for load in ("bulk", "import"):
            settings = make_settings("real", webhook_allowlist="127.0.0.1")
            redis = make_redis(settings)
            audience = Audience(team="t1", size=450, tag=7, webhook_base="http://127.0.0.1:9", preferences_every=10)
            try:
                if load == "bulk":
                    await store_audience(redis, settings, audience, SECRET, chunk=200)
                else:
                    report = await import_subscribers(
                        redis, settings, cast(IO[bytes], _LineStream(audience.lines(SECRET))), chunk=200
                    )
                    assert (report.imported, report.rejected) == (450, 0)
                found.append(await _stored(redis, settings.namespace))
            finally:
                await delete_namespace(redis, settings.namespace)
                await redis.aclose()
        return found[0], found[1]

    bulk, imported = asyncio.run(both())
    assert sum(len(v) for k, v in bulk.items() if isinstance(v, dict) and "seen" not in k) > 450
    assert sum(len(v) for k, v in bulk.items() if ":prefs:" in k and isinstance(v, dict)) == 45  # one in 10
    assert bulk == imported


def test_the_topics_case_reaches_plain_fcm_followers_through_one_topic_message_and_the_rest_per_token(
    tmp_path,
) -> None:
    """The FCM topics case at 300 followers (180 FCM, 18 of them with preferences): its per-token run,
    ``goalhorn topics sync``, and the goal with topics, each device exactly once, requests counted."""
    require_real_services()
    with Deployment(tmp_path, control=True) as deployment:

        async def case():
            audience = await deployment.load_audience("topics", 300, preferences_every=10)
            warm = await deployment.load_audience("warm", 20)
            try:
                return await topics_case(deployment, audience, "300", warm, None)
            finally:
                await deployment.close_bus()

        t = asyncio.run(case())
    assert (t.sync["in_sync"], t.sync["subscribed"], t.management) == (True, 162, {"batchAdd": 1})
    assert t.per_token.exactly_once
    assert t.topics.exactly_once
    assert t.per_token.requests == {"fcm": 180, "apns": 105, "webhook": 15}
    assert t.topics.requests == {"fcm": 19, "apns": 105, "webhook": 15}  # 1 topic message + 18 tokens
    assert {route: tally.records for route, tally in t.topics.routes.items()} == {
        "fcm/topic": 162,
        "fcm": 18,
        "apns": 105,
        "webhook": 15,
    }
    traced = t.topics.traced
    assert (traced["topic_messages"], traced["topic_members"], traced["recipients"]) == (1, 162, 138)
    assert t.topic_accepted_s is not None
    assert t.fcm_accepted_s is not None
    assert t.topic_fanned_out_s is not None
    assert 0 < t.topic_accepted_s <= t.topic_fanned_out_s
    results = Results("e2e")
    assert report_topics(results, t)
    section = results.markdown("python -m bench e2e", "Run now.")
    assert (
        "| topics, 300: FCM requests the goal needs | 19.00 requests (1 run) | per token: 180 requests | 0.11x |"
        in section
    )
