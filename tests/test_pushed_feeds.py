"""Pushed feeds on ``goalhorn run ingest``'s endpoint: signed or token-authenticated bodies become
live state and intents on the bus before the 202; bad signatures, oversized and malformed bodies are
refused and counted; a bus that fails answers 503 and the provider's retry alerts once, on both backends."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterable

import aiohttp
import pytest
from pydantic import SecretStr

from goalhorn.app.ingest import IngestStage, check_feeds
from goalhorn.app.parts import Parts
from goalhorn.bus import Bus, BusMessage, Handler, Subscription
from goalhorn.errors import ConfigError, PublishNotConfirmed
from goalhorn.ingest.pushed import SIGNATURE, sign
from goalhorn.ingest.quarantine import rejected_count
from goalhorn.keys import Keys
from goalhorn.models import EventKind, Intent
from goalhorn.settings import Settings
from tests.feeds import fixture

pytestmark = pytest.mark.timeout(60)
SR_SECRET = b"sportradar-hook-secret-0123"
SP_TOKEN = "statsperform-token-abcdef012"


def nfl(sequence: int, play_type: str, home: int, away: int, scoring: bool = True) -> bytes:
    body = {
        "payload": {
            "game": {
                "id": "g-push",
                "status": "inprogress",
                "home": {"id": "kc", "alias": "KC", "points": home},
                "away": {"id": "buf", "alias": "BUF", "points": away},
            },
            "event": {
                "type": "play",
                "id": f"p{sequence}",
                "sequence": sequence,
                "play_type": play_type,
                "scoring_play": scoring,
                "clock": "5:00",
                "period": {"number": 2},
                "start_situation": {"possession": {"id": "kc"}},
            },
        },
        "metadata": {"league": "NFL", "operation": "update"},
    }
    return json.dumps(body).encode()


class FlakyBus(Bus):
    """The backend's bus, whose first ``failures`` publishes are not confirmed."""

    def __init__(self, inner: Bus, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def start(self, queues: Iterable[str]) -> None:
        await self.inner.start(queues)

    async def publish(
        self, queue: str, body: bytes, *, priority: int = 0, message_id: str, headers: dict[str, str] | None = None
    ) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise PublishNotConfirmed("nacked")
        await self.inner.publish(queue, body, priority=priority, message_id=message_id, headers=headers)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Subscription:
        return await self.inner.consume(queue, handler, prefetch=prefetch)

    async def depth(self, queue: str) -> int:
        return await self.inner.depth(queue)

    async def purge(self, queue: str) -> int:
        return await self.inner.purge(queue)

    async def aclose(self) -> None:
        await self.inner.aclose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def endpoint(bus: Bus, settings: Settings, redis) -> AsyncIterator[tuple[str, IngestStage, FlakyBus]]:
    port = free_port()
    configured = settings.model_copy(
        update={
            "feeds_listen": f"127.0.0.1:{port}",
            "feeds_secrets": SecretStr(f"sportradar=hmac:{SR_SECRET.decode()},statsperform=token:{SP_TOKEN}"),
            "feeds_max_bytes": 64 * 1024,
        }
    )
    flaky = FlakyBus(bus, failures=0)
    parts = Parts.build(configured, bus=flaky)
    stage = IngestStage(parts)
    await stage.start()
    try:
        yield f"http://127.0.0.1:{port}/v1/feeds", stage, flaky
    finally:
        await stage.stop()
        await parts.aclose()


async def intents_on(bus: Bus, settings: Settings, count: int) -> list[Intent]:
    seen: list[BusMessage] = []

    async def handler(message: BusMessage) -> None:
        seen.append(message)

    subscription = await bus.consume(Keys(settings.namespace).intent_queue, handler, prefetch=16)
    async with asyncio.timeout(10):
        while len(seen) < count:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # and nothing more
    await subscription.cancel()
    return [Intent.from_json(m.body) for m in seen]


async def post(session: aiohttp.ClientSession, url: str, body: bytes, **headers: str) -> tuple[int, dict]:
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()


async def test_signed_pushes_reach_the_bus_once_and_bad_ones_are_refused(endpoint, bus: Bus, settings) -> None:
    url, stage, _ = endpoint
    touchdown = nfl(2, "pass", 6, 0)
    malformed_before = rejected_count("sportradar", "not_a_payload")
    async with aiohttp.ClientSession() as session:
        kickoff = nfl(1, "kickoff", 0, 0, scoring=False)
        assert (await post(session, f"{url}/sportradar", kickoff, **{SIGNATURE: sign(SR_SECRET, kickoff)}))[0] == 202
        status, answer = await post(session, f"{url}/sportradar", touchdown, **{SIGNATURE: sign(SR_SECRET, touchdown)})
        assert (status, answer) == (202, {"states": 1, "events": 1, "rejected": 0})
        # The provider sends it again (it never saw our answer): accepted, nothing new.
        status, answer = await post(session, f"{url}/sportradar", touchdown, **{SIGNATURE: sign(SR_SECRET, touchdown)})
        assert (status, answer["events"]) == (202, 0)
        assert (await post(session, f"{url}/sportradar", touchdown, **{SIGNATURE: sign(b"wrong" * 4, touchdown)}))[
            0
        ] == 401
        assert (await post(session, f"{url}/sportradar", touchdown))[0] == 401
        big = b" " * (65 * 1024)
        assert (await post(session, f"{url}/sportradar", big, **{SIGNATURE: sign(SR_SECRET, big)}))[0] == 413
        junk = b'{"payload": {"game": {}}}'
        status, answer = await post(session, f"{url}/sportradar", junk, **{SIGNATURE: sign(SR_SECRET, junk)})
        assert (status, answer["reasons"]) == (400, ["not_a_payload"])
        assert (await post(session, f"{url}/espn", b"{}"))[0] == 404  # not configured
        ma3 = fixture("statsperform/ma3_hsv_svs.json")
        assert (await post(session, f"{url}/statsperform", ma3, Authorization="Bearer nope-nope-nope-nope"))[0] == 401
        status, answer = await post(session, f"{url}/statsperform", ma3, Authorization=f"Bearer {SP_TOKEN}")
        assert status == 202
        assert answer["events"] > 0

    assert rejected_count("sportradar", "not_a_payload") == malformed_before + 1
    assert stage.pushed is not None
    counts = stage.pushed.counts
    assert counts[("sportradar", "accepted")] == 3
    assert counts[("sportradar", "unauthorized")] == 2
    assert counts[("sportradar", "too_large")] == 1
    assert counts[("sportradar", "rejected")] == 1
    assert counts[("statsperform", "unauthorized")] == 1
    intents = await intents_on(bus, settings, stage.summary.intents)
    touchdowns = [i for i in intents if i.kind is EventKind.TOUCHDOWN]
    assert [(i.team_id, i.data["home_score"]) for i in touchdowns] == [("kc", "6")], "one alert, before the 202"
    assert {i.kind for i in intents} >= {EventKind.GOAL, EventKind.TOUCHDOWN}


async def test_a_push_the_bus_refused_is_answered_503_and_its_retry_alerts_once(endpoint, bus: Bus, settings) -> None:
    url, _, flaky = endpoint
    async with aiohttp.ClientSession() as session:
        kickoff = nfl(1, "kickoff", 0, 0, scoring=False)
        await post(session, f"{url}/sportradar", kickoff, **{SIGNATURE: sign(SR_SECRET, kickoff)})
        flaky.failures = 1
        field_goal = nfl(2, "fieldgoal", 3, 0)
        headers = {SIGNATURE: sign(SR_SECRET, field_goal)}
        assert (await post(session, f"{url}/sportradar", field_goal, **headers))[0] == 503
        # The retry is the same payload: the gate has passed its sequence, and it must still alert.
        assert (await post(session, f"{url}/sportradar", field_goal, **headers))[0] == 202
    intents = await intents_on(bus, settings, 1)
    assert [i.kind for i in intents] == [EventKind.FIELD_GOAL]


@pytest.mark.parametrize(
    ("listen", "secrets", "variable"),
    [
        ("127.0.0.1:8480", None, "GOALHORN_FEEDS_SECRETS: needed"),
        ("8480", "sportradar=hmac:0123456789abcdef", "GOALHORN_FEEDS_LISTEN"),
        ("127.0.0.1:8480", "sportradar=md5:0123456789abcdef", "GOALHORN_FEEDS_SECRETS: sportradar: expected"),
        ("127.0.0.1:8480", "sportradar=hmac:short", "GOALHORN_FEEDS_SECRETS: sportradar: expected"),
        ("127.0.0.1:8480", "opta=hmac:0123456789abcdef", "GOALHORN_FEEDS_SECRETS: unknown source 'opta'"),
    ],
)
def test_an_endpoint_without_secrets_or_with_bad_ones_is_refused_naming_the_variable(
    listen: str, secrets: str | None, variable: str
) -> None:
    settings = Settings(feeds_listen=listen, feeds_secrets=None if secrets is None else SecretStr(secrets))
    with pytest.raises(ConfigError, match=variable) as caught:
        check_feeds(settings)
    assert "0123456789abcdef" not in str(caught.value)
    assert "short" not in str(caught.value).replace("expected", "")
