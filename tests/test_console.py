"""The console provider: one parseable line per delivery, and per-device results."""

from __future__ import annotations

import io

from goalhorn.models import DeliveryBatch, Device
from goalhorn.providers.console import ConsoleProvider
from tests.test_webhook import make_intent


def phone(device_id: str, locale: str = "en") -> Device:
    return Device(device_id=device_id, user_id="u-1", platform="fcm", address=f"tok-{device_id}", locale=locale)


def batch(*devices: Device, template: str = "goal") -> DeliveryBatch:
    return DeliveryBatch(batch_id="b-1", platform="fcm", intent=make_intent(template=template), devices=devices)


async def test_writes_one_line_per_delivery():
    out = io.StringIO()
    async with ConsoleProvider("fcm", out) as provider:
        results = await provider.send(batch(phone("d-1"), phone("d-2", "pt-BR")))

    assert [(r.device_id, r.outcome) for r in results] == [("d-1", "sent"), ("d-2", "sent")]
    assert all(r.provider_message_id for r in results)
    assert len({r.provider_message_id for r in results}) == 2
    parsed = [line.split(" | ") for line in out.getvalue().splitlines()]
    assert parsed == [
        ["fcm d-1 int-1", "GOAL! Arsenal", "Chelsea 1 - 2 Arsenal (67')"],
        ["fcm d-2 int-1", "GOL! Arsenal", "Chelsea 1 - 2 Arsenal (67')"],
    ]


async def test_without_out_it_only_returns_results():
    provider = ConsoleProvider("fcm")
    results = await provider.send(batch(phone("d-1")))
    assert results[0].outcome == "sent"


async def test_a_template_that_cannot_render_fails_the_device_not_the_call():
    out = io.StringIO()
    provider = ConsoleProvider("fcm", out)
    results = await provider.send(batch(phone("d-1"), phone("d-2"), template="no-such-template"))

    assert [(r.outcome, r.retryable) for r in results] == [("failed", False), ("failed", False)]
    assert all("no-such-template" in (r.reason or "") for r in results)
    assert out.getvalue() == ""


async def test_a_live_activity_update_shows_its_event_and_ticker_not_a_template() -> None:
    from datetime import timedelta

    from goalhorn.intents.liveactivity import HIGH, live_intent
    from goalhorn.models import EventKind
    from tests.test_liveactivity_intents import T0, event, soccer

    state = soccer(60, home_score=1, display_clock="67'")
    goal = live_intent(
        state,
        [event(state, EventKind.GOAL)],
        live_event="update",
        priority=HIGH,
        last_event="GOAL Messi 67'",
        now=T0 + timedelta(seconds=61),
        dismiss_s=900,
    )
    out = io.StringIO()
    async with ConsoleProvider("fcm", out) as provider:
        results = await provider.send(
            DeliveryBatch(batch_id="b-1", platform="fcm", intent=goal, devices=(phone("d-1"),))
        )

    assert results[0].outcome == "sent"
    assert out.getvalue().split(" | ")[1:] == ["live update", "MIA 1-0 ORL 67'", "GOAL Messi 67'\n"]

    broken = goal.model_copy(update={"data": {**goal.data, "liveactivity": "{not json"}})
    (result,) = await ConsoleProvider("fcm").send(
        DeliveryBatch(batch_id="b-2", platform="fcm", intent=broken, devices=(phone("d-1"),))
    )
    assert (result.outcome, result.message_error) == ("failed", True)
    assert "unreadable liveactivity document" in (result.reason or "")
