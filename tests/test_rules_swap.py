"""A rules file edited under a running pipeline: intents made before the edit name a template the new
file no longer has. Those devices are dead-lettered with the reason; alerts under the new rules keep
flowing, and no provider's breaker counts the failures."""

from __future__ import annotations

import io
import os
from typing import Any

from goalhorn.app.pipeline import Pipeline
from goalhorn.catalog import default_catalog
from goalhorn.dispatch.breaker import State
from goalhorn.intents.rules import intents_for
from goalhorn.models import DeliveryBatch, Device, utcnow
from goalhorn.preferences.store import PreferenceStore
from goalhorn.providers.console import ConsoleProvider
from goalhorn.settings import Settings
from tests.queues import delete_delivery_queues
from tests.test_catalog import goal_event

RULES = """\
segments:
  fans: {source: "team:{team_id}:followers"}
rules:
  goal: {kinds: [GOAL], priority: 9, segments: [fans], template: TEMPLATE}
templates:
  TEMPLATE:
    en: {title: "TITLE {team}", body: "{home_score}-{away_score}"}
"""


def rules(template: str, title: str) -> str:
    return RULES.replace("TEMPLATE", template).replace("TITLE", title)


async def test_intents_of_a_template_removed_by_an_edit_are_dead_lettered_and_new_ones_flow(
    settings: Settings, tmp_path
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules("goal", "GOAL"))
    settings = settings.model_copy(update={"rules_file": str(path), "breaker_failure_threshold": 2})
    out = io.StringIO()
    fans = [Device(device_id=f"d{n}", user_id=f"u{n}", platform="fcm", address=f"tok{n}") for n in range(5)]
    (made_before_the_edit,) = intents_for(goal_event(event_id="e-old"), default_catalog().rules[:1], utcnow())
    try:
        async with Pipeline(settings, lambda platform, render: ConsoleProvider(platform, out, render=render)) as p:
            store = PreferenceStore(p.redis, p.keys, buckets=settings.preference_buckets)
            await store.add_devices(fans)
            await store.follow_teams((device.user_id, "t1") for device in fans)
            path.write_text(rules("goal_v2", "GOAL v2"))
            os.utime(path, ns=(1, 1))
            assert set(p.catalog.current().templates) == {"goal_v2"}
            stale = DeliveryBatch(batch_id="stale", platform="fcm", intent=made_before_the_edit, devices=tuple(fans))
            await p.parts.delivery.enqueue(stale.encode())
            await p.counters.add({"batches_published": 1})
            await p.publish_events([goal_event(event_id="e-new", observed_at=utcnow())])
            snap = await p.wait_idle(timeout_s=30)
            entries: Any = await p.redis.xrange(p.keys.dead_letters())
            deliverer = p.parts.delivery._deliverer
            assert deliverer is not None
            breakers = deliverer.breakers
    finally:
        if settings.amqp_url:
            await delete_delivery_queues(settings)

    assert made_before_the_edit.template == "goal"
    assert snap.get("delivery:fcm:sent") == 5
    assert snap.get("delivery:fcm:dead_lettered") == 5
    assert {line.split(" | ")[1] for line in out.getvalue().splitlines()} == {"GOAL v2 Arsenal"}
    assert {fields[b"reason"].decode() for _, fields in entries} == {"render_failed: unknown message template 'goal'"}
    assert set(breakers.states().values()) <= {State.CLOSED}
    assert all(breaker.opened_count == 0 for breaker in breakers._circuits.values())
