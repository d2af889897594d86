"""Stats Perform MA3 polled by ``goalhorn run ingest`` against a local server: 5xx, 429, a stalled and
a truncated answer, then the match as it goes on — each goal alerted once however often the document
is polled again, the outlet key never logged; on both backends."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

import pytest
from pydantic import SecretStr

from goalhorn.app.ingest import check_feeds, run_ingest
from goalhorn.bus import Bus, BusMessage
from goalhorn.errors import ConfigError
from goalhorn.keys import Keys
from goalhorn.models import EventKind, Intent
from goalhorn.settings import Settings
from tests.feeds import fixture
from tests.httpserver import Script, body, serve, stall, truncated

pytestmark = pytest.mark.timeout(60)
OUTLET = "outletKey0123456789abcdef"
FIXTURE = "71pif9hi2vwzp6q0xzilyxst0"
GOALS = [2328646979, 2328657401, 2328663263]


def match_after(goals: int, status: str = "Playing") -> bytes:
    """The MA3 document with only the first ``goals`` goals scored yet (and nothing after the last)."""
    document = json.loads(fixture("statsperform/ma3_hsv_svs.json"))
    document["liveData"]["matchDetails"]["matchStatus"] = status
    if goals < len(GOALS):
        cut = next(i for i, e in enumerate(document["liveData"]["event"]) if e["id"] == GOALS[goals])
        document["liveData"]["event"] = document["liveData"]["event"][:cut]
    return json.dumps(document).encode()


async def test_the_match_is_polled_through_failures_and_each_goal_alerted_once(
    bus: Bus, settings: Settings, redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="goalhorn")
    queue = Keys(settings.namespace).intent_queue
    await bus.start([queue])
    script = Script(
        [
            body(b"upstream down", status=503),
            body(b"slow down", status=429, headers={"Retry-After": "0.05"}),
            stall(2.0),
            truncated(match_after(1)),
            body(match_after(1)),
            body(match_after(1)),  # nothing new
            body(match_after(2)),
            body(match_after(3, status="Played")),
        ]
    )
    async with serve(script.app()) as base:
        configured = settings.model_copy(
            update={
                "statsperform_matches": FIXTURE,
                "statsperform_outlet_key": SecretStr(OUTLET),
                "statsperform_base_url": f"{base}/soccerdata/matchevent",
                "poll_fast_s": 0.05,
                "poll_slow_s": 0.05,
                "poll_timeout_s": 0.5,
                "poll_backoff_base_s": 0.01,
                "poll_backoff_max_s": 0.05,
            }
        )
        summary = await run_ingest(configured, bus=bus, duration_s=3.0)

    assert script.paths[0] == f"/soccerdata/matchevent/{OUTLET}/{FIXTURE}"
    assert len(script.paths) >= 8
    assert summary.poll_failures == {"http_5xx": 1, "http_429": 1, "timeout": 1, "truncated": 1}
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("goalhorn")]
    assert ours, "the failures were logged"
    assert not [line for line in ours if OUTLET in line]
    seen: list[BusMessage] = []

    async def handler(message: BusMessage) -> None:
        seen.append(message)

    subscription = await bus.consume(queue, handler, prefetch=16)
    async with asyncio.timeout(10):
        while len(seen) < summary.intents:
            await asyncio.sleep(0.01)
    await subscription.cancel()
    intents = [Intent.from_json(m.body) for m in seen]
    goals = [(i.data["home_score"], i.data["away_score"], i.data["team"]) for i in intents if i.kind is EventKind.GOAL]
    assert goals == [("1", "0", "HSV"), ("1", "1", "SVS"), ("2", "1", "HSV")]
    assert Counter(i.intent_id for i in intents).most_common(1)[0][1] == 1
    assert EventKind.GAME_END in {i.kind for i in intents}


@pytest.mark.parametrize(
    ("matches", "key", "variable"),
    [
        (FIXTURE, None, "GOALHORN_STATSPERFORM_OUTLET_KEY"),
        (FIXTURE, "has/slash", "GOALHORN_STATSPERFORM_OUTLET_KEY"),
        ("../etc", OUTLET, "GOALHORN_STATSPERFORM_MATCHES"),
    ],
)
def test_a_match_without_an_outlet_key_or_with_a_bad_id_is_refused(
    matches: str, key: str | None, variable: str
) -> None:
    settings = Settings(statsperform_matches=matches, statsperform_outlet_key=None if key is None else SecretStr(key))
    with pytest.raises(ConfigError, match=variable):
        check_feeds(settings)
